"""`nmt-average`: the mean of several checkpoints' weights, as one self-contained checkpoint.

    nmt-average CKPT [CKPT ...] -o OUT.pt
    nmt-average RUN --last K -o OUT.pt      # the run's last K kept validation checkpoints
    nmt-average RUN --last K -o DIR         # the same as a model directory (as nmt-export writes)

Runs keep their validation checkpoints with `train.keep_checkpoints=K`. Checkpoints of different
models or vocabularies are refused with one line; the output is written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nmt.checkpoint import CheckpointError, average_checkpoints, step_checkpoints
from nmt.model_card import model_card
from nmt.model_directory import write_model_directory

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-average", description="Average the weights of checkpoints.")
    parser.add_argument("inputs", nargs="+", metavar="CKPT_OR_RUN", help=".pt checkpoints, or one run directory")
    parser.add_argument("--last", type=int, metavar="K", help="with a run directory: its last K step checkpoints")
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="the averaged checkpoint (.pt) or model directory to write"
    )
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
        averaged = average_checkpoints(paths)
        if args.output.suffix == ".pt":
            averaged.save(args.output)
        else:  # a model directory, as nmt-export writes it
            card = model_card(averaged, args.output.resolve().name, [], None)
            write_model_directory(averaged, args.output, card=card)
    except (CheckpointError, FileExistsError) as error:
        print(f"nmt-average: {error}", file=sys.stderr)
        return 2
    log.info("averaged %d checkpoints into %s", len(paths), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
