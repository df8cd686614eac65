"""``python -m facegs``: the ``facegs`` command line (:mod:`facegs.cli`)."""

import sys

from facegs.cli.app import main

sys.exit(main())
