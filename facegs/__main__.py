import sys

from facegs.cli.app import main

sys.exit(main())
