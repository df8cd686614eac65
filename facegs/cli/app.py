"""The ``facegs`` command line. Each stage registers its own subcommand from its own module.

Every subcommand module exposes ``register(subparsers)`` which adds a parser whose ``func``
default takes the parsed ``argparse.Namespace`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from facegs import __version__
from facegs.core.errors import FitError, InputError

# Order = order in `facegs --help`, following the data flow.
COMMAND_MODULES = (
    "facegs.cli.synth",  # facegs synth, facegs contact-sheet
    "facegs.cli.ingest",  # facegs ingest
    "facegs.cli.validate",  # facegs validate
    "facegs.cli.parser",  # facegs parser ...
    "facegs.cli.label",  # facegs label
    "facegs.cli.refine",  # facegs refine
    "facegs.cli.dataset",  # facegs dataset info/sheet/finalize
)


def default_threads(requested: int | None = None) -> int:
    """torch threads for a facegs process: ``requested`` (``--threads``), else ``$FACEGS_THREADS``, else 1."""
    if requested is not None and requested > 0:
        return requested
    env = os.environ.get("FACEGS_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise SystemExit(f"facegs: FACEGS_THREADS must be a positive integer, got {env!r}") from None
        if n > 0:
            return n
        raise SystemExit(f"facegs: FACEGS_THREADS must be a positive integer, got {env!r}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facegs",
        description=(
            "facegs: multi-view 3D Gaussian splatting label refinement for face parsing under extreme "
            "head poses. Data flows: synth/ingest -> validate -> label -> refine -> shards -> train."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'facegs COMMAND --help' for the options of one command.",
    )

    p.add_argument("--version", action="version", version=f"facegs {__version__}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $FACEGS_THREADS, else 1). One thread per process is "
                   "the safe default on a shared machine: OpenMP threads that compete with other jobs for the "
                   "cores spin, measured up to 50x slower than 1 thread; scale out with processes (Ray actors).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    torch.set_num_threads(default_threads(args.threads))
    try:
        return int(args.func(args) or 0)
    except (InputError, FitError, FileExistsError) as e:
        print(f"facegs {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
