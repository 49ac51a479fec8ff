#!/usr/bin/env python
"""Write a hard input for `nmt-translate`: N lines cycled from a source file, every 10th line
empty, one line of 5,000 characters and one line of invalid UTF-8.

    python scripts/stress_input.py SOURCE_FILE[.gz] N OUT

Used to check that N lines in give N lines out, and that memory stays flat as N grows
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("lines", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    opener = gzip.open if args.source.name.endswith(".gz") else open
    with opener(args.source, "rb") as stream:
        sentences = [line.rstrip(b"\r\n") for line in stream if line.strip()]
    lines = [b"" if i % 10 == 9 else sentences[i % len(sentences)] for i in range(args.lines)]
    lines[min(1234, args.lines - 1)] = b" ".join(sentences).decode("utf-8")[:5000].encode("utf-8")
    lines[min(2021, args.lines - 2)] = b"Ein Mann \xff\xfe f\xe4hrt Fahrrad."  # Latin-1 bytes, not UTF-8
    args.out.write_bytes(b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    main()
