"""A straightforward pandas script doing the same work (how many notebooks do it)."""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from careful import clean_text  # noqa: E402
from tunepipe.data.tokens import get_encoding  # noqa: E402


def main() -> None:
    src, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    enc = get_encoding("o200k_base")
    df = pd.read_json(src, lines=True)
    df["messages"] = df["messages"].apply(
        lambda ms: [{"role": m["role"], "content": clean_text(unicodedata.normalize("NFC", m["content"]))} for m in ms])
    df["key"] = df["messages"].apply(lambda ms: " ".join(m["content"].casefold() for m in ms))
    df = df.drop_duplicates("key")
    df["tokens"] = df["messages"].apply(lambda ms: 3 + sum(4 + len(enc.encode_ordinary(m["content"])) for m in ms))
    df["bucket"] = df["key"].apply(lambda k: hashlib.blake2b(k.encode(), digest_size=8).digest()[0])
    df[df["bucket"] >= 26][["messages"]].to_json(out / "train.jsonl", orient="records", lines=True)
    df[df["bucket"] < 26][["messages"]].to_json(out / "validation.jsonl", orient="records", lines=True)
    print(f"examples={len(df)} p50={int(df['tokens'].median())}")


if __name__ == "__main__":
    main()
