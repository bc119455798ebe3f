"""``python -m lifeguard``: the same command line as ``lifeguard``."""

import sys

from lifeguard.cli import main

sys.exit(main())
