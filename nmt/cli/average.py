"""`nmt-average`: the mean of several checkpoints' weights, as one self-contained checkpoint.

    nmt-average CKPT [CKPT ...] -o OUT.pt
    nmt-average RUN --last K -o OUT.pt      # the run's last K kept validation checkpoints

Runs keep their validation checkpoints with `train.keep_checkpoints=K`. Checkpoints of different
models or vocabularies are refused with one line; the output is written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nmt.checkpoint import CheckpointError, average_checkpoints, step_checkpoints

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-average", description="Average the weights of checkpoints.")
    parser.add_argument("inputs", nargs="+", metavar="CKPT_OR_RUN", help=".pt checkpoints, or one run directory")
    parser.add_argument("--last", type=int, metavar="K", help="with a run directory: its last K step checkpoints")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the averaged checkpoint to write")
    return parser.parse_args(argv)


def checkpoints_of(args: argparse.Namespace) -> list[Path]:
    if args.last is None:
        return [Path(path) for path in args.inputs]
    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
        raise CheckpointError("--last K takes one run directory")
    if args.last < 1:
        raise CheckpointError(f"--last {args.last}: give K >= 1")
    kept = step_checkpoints(Path(args.inputs[0]) / "checkpoints")
    if len(kept) < args.last:
        raise CheckpointError(
            f"{args.inputs[0]} keeps {len(kept)} step checkpoints, fewer than --last {args.last} "
            "(train with train.keep_checkpoints=K)"
        )
    return kept[-args.last :]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        paths = checkpoints_of(args)
        if not args.output.parent.is_dir():
            raise CheckpointError(f"output directory {args.output.parent} does not exist")
        average_checkpoints(paths).save(args.output)
    except CheckpointError as error:
        print(f"nmt-average: {error}", file=sys.stderr)
        return 2
    log.info("averaged %d checkpoints into %s", len(paths), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
