import sys

from facegs.cli import main

sys.exit(main())
