"""The ``facegs`` command line: one module per subcommand group, :func:`main` the entry point.

In: command-line arguments. Out: exit codes (0 ok, 1 bad data or failed work, 2 bad arguments) and
the files of each stage. Options are derived from each job's dataclass where one exists
(:mod:`facegs.core.options`).
"""

from facegs.cli.app import main

__all__ = ["main"]
