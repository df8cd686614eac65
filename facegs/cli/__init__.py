"""The ``facegs`` command line: one module per subcommand group, :func:`main` the entry point."""

from facegs.cli.app import main

__all__ = ["main"]
