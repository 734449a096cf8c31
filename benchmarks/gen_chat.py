"""Generate N synthetic chat examples as JSONL (~700 bytes each), deterministic for a seed.

About 1 % are exact duplicates of an earlier example and 1 % contain an e-mail address, so the
clean stage has real work to do. Usage: python benchmarks/gen_chat.py OUT.jsonl [N]
"""

from __future__ import annotations

import random
import sys

import orjson

WORDS = ("the model data train answer question sarcastic factual chatbot capital river mountain planet "
         "energy history science language number city ocean music art light water system value "
         "paris london tokyo cairo lima oslo quickly slowly obviously certainly apparently really "
         "because although however therefore meanwhile whenever about around between among").split()
SYSTEM = "Marv is a factual chatbot that is also sarcastic."


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice(".?!")


def main() -> None:
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    rng = random.Random(7)
    recent: list[bytes] = []
    with open(out, "wb", buffering=1 << 20) as f:
        for i in range(n):
            if recent and rng.random() < 0.01:
                f.write(rng.choice(recent))
                continue
            user = " ".join(sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(1, 3)))
            answer = " ".join(sentence(rng, rng.randint(8, 18)) for _ in range(rng.randint(2, 5)))
            if rng.random() < 0.01:
                answer += f" Write to user{i}@example.com for more."
            line = orjson.dumps({"messages": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": f"{user} (#{i})"},
                                              {"role": "assistant", "content": answer}]}) + b"\n"
            f.write(line)
            if len(recent) < 1000:
                recent.append(line)
            elif rng.random() < 0.001:
                recent[rng.randrange(1000)] = line


if __name__ == "__main__":
    main()
