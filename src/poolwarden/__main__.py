"""``python -m poolwarden``: the same command line as ``poolwarden``."""

import sys

from poolwarden.cli import main

if __name__ == "__main__":
    sys.exit(main())
