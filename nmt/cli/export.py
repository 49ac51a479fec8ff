"""`nmt-export`: a run or checkpoint as a model directory, to share (e.g. on the Hugging Face Hub).

    nmt-export RUN_OR_CKPT DIR [--precision bf16] [--license apache-2.0] [--name org/name] [--onnx [--quantize int8]]
    hf upload org/name DIR                        # publishing is the hub client's

DIR gets config.json, model.safetensors, the SentencePiece model(s) and a model card (README.md)
with the run's saved evaluations (`nmt-evaluate RUN --split test` first). It holds no pickle.
Every tool reads it where it takes a run: `nmt-translate DIR`, or `org/name` from the Hub.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import torch

from nmt.checkpoint import Checkpoint, CheckpointError
from nmt.model_card import model_card, saved_evaluations
from nmt.model_directory import write_model_directory
from nmt.model_sources import load_checkpoint, resolve_model

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-export", description="Write a model directory to share a model.")
    parser.add_argument(
        "source", metavar="RUN_OR_CKPT", help="run directory (its best.pt), .pt checkpoint or model directory"
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="the model directory to write (new or empty)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="weights' type (default: %(default)s)"
    )
    parser.add_argument("--license", help="the model card's license, e.g. apache-2.0, cc-by-4.0 (default: none given)")
    parser.add_argument("--name", help="the model's name in its card (default: DIR's name), e.g. org/name")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="add the encoder and one decoder step as ONNX graphs (for --engine onnxruntime), checked against torch",
    )
    parser.add_argument(
        "--quantize", choices=("none", "int8"), default="none", help="with --onnx, int8 copies of the graphs too"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    if args.quantize != "none" and not args.onnx:
        print("nmt-export: --quantize int8 quantizes the ONNX graphs: add --onnx", file=sys.stderr)
        return 2
    try:
        path = resolve_model(args.source)
        checkpoint = load_checkpoint(path)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        evaluations = [] if path.is_dir() else saved_evaluations(run_dir / "results")
        name = args.name or args.directory.resolve().name
        onnx = (args.quantize if args.quantize != "none" else "fp32") if args.onnx else None
        card = model_card(checkpoint, name, evaluations, args.license, onnx)
        graphs = None
        if args.onnx:
            graphs = functools.partial(onnx_graphs, checkpoint, int8=args.quantize == "int8")
        write_model_directory(checkpoint, args.directory, args.precision, card, graphs)
    except (CheckpointError, OSError, ValueError) as error:
        print(f"nmt-export: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"nmt-export: {error.name or error}: pip install 'nmt[export]'", file=sys.stderr)
        return 2
    log.info(
        "wrote %s (%s weights, %d saved evaluations in its card)", args.directory, args.precision, len(evaluations)
    )
    return 0


def onnx_graphs(checkpoint: Checkpoint, directory: Path, int8: bool) -> dict:
    """The checkpoint's model as ONNX graphs in `directory` (nmt.onnx_graphs), built on the CPU."""
    from nmt.onnx_graphs import write_graphs

    return write_graphs(checkpoint.build_model(torch.device("cpu")), directory, int8=int8)


if __name__ == "__main__":
    sys.exit(main())
