"""tunepipe: declarative, cached pipelines for fine-tuning chat models."""

__version__ = "0.1.0"
