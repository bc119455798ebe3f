"""``python -m lifeguard``: the same command line as ``lifeguard``."""

import sys

from lifeguard.cli import main

if __name__ == "__main__":
    sys.exit(main())
