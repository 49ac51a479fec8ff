"""`nmt-inspect`: what the gates of every encoder and decoder layer do on one sentence.

    nmt-inspect RUN_OR_CKPT "Ein Mann fährt Fahrrad." -o DIR

prints the (greedy) translation and writes one PNG per layer and direction, plus gates.json with
the numbers (`nmt.inspection`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nmt.checkpoint import CheckpointError
from nmt.inspection import inspect_sentence, write_inspection
from nmt.options import DEVICES
from nmt.translation import load_model

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="nmt-inspect", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT")
    parser.add_argument("sentence")
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory for the PNGs and gates.json")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    args = parser.parse_args(argv)
    try:
        if not args.sentence.strip():
            raise ValueError("the sentence is empty")
        model, tokenizer, _ = load_model(args.checkpoint, args.device)
        translation, layers = inspect_sentence(model, tokenizer, args.sentence, next(model.parameters()).device)
        paths = write_inspection(translation, layers, args.sentence, args.output)
    except (CheckpointError, ValueError, RuntimeError, OSError) as error:
        print(f"nmt-inspect: {error}", file=sys.stderr)
        return 2
    print(translation)
    log.info("wrote %d plots and gates.json to %s", len(paths), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
