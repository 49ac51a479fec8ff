"""`nmt-serve`: a checkpoint behind an HTTP endpoint, and the page that shows its gates.

    nmt-serve RUN_OR_CKPT [--host 127.0.0.1] [--port 8000] [--precision bf16|--quantize int8]

The model is loaded once, before the server starts, so a bad checkpoint is one line and exit
status 2; then uvicorn serves `nmt.service.app` until SIGTERM or Ctrl-C, which finish the requests
in flight first.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from nmt.checkpoint import CheckpointError
from nmt.cli.options import add_option_flags, options_from_args
from nmt.options import ConfigError, InferenceOptions
from nmt.service.app import Limits, create_app
from nmt.service.engine import Engine, EngineSettings, LoadedModel

log = logging.getLogger("nmt.serve")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-serve", description="Serve a trained model over HTTP, with a page.")
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run directory (its best.pt) or .pt checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    add_option_flags(parser, InferenceOptions, "model", exclude=("workers",))  # one process, search threads
    add_option_flags(parser, EngineSettings, "batching across requests")
    add_option_flags(parser, Limits, "limits (beyond them: 400, 413 or 504)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings, limits = options_from_args(EngineSettings, args), options_from_args(Limits, args)
    try:
        inference = options_from_args(InferenceOptions, args)
        loaded = LoadedModel.load(args.checkpoint, inference)
    except (CheckpointError, ConfigError, OSError, ValueError) as error:
        print(f"nmt-serve: {error}", file=sys.stderr)
        return 2
    import uvicorn

    app = create_app(Engine(loaded, settings), inference, limits)
    log.info("serving %s on http://%s:%d/", loaded.path, args.host, args.port)
    # uvicorn finishes the requests in flight on SIGTERM or Ctrl-C, then raises the signal again
    # under the handlers it found: these make that a clean exit 0 instead of a kill.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda number, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=None)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
