"""Shared helpers of the data stages: streaming JSONL, ordered parallel maps, token counts."""
