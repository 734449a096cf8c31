"""The floor for one pass: read, parse, serialise and write every line with orjson."""

import sys

import orjson

with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb", buffering=1 << 20) as out:
    for line in src:
        out.write(orjson.dumps(orjson.loads(line)))
        out.write(b"\n")
