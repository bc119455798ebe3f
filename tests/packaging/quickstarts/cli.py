"""poolwarden[cli]: the command runs; a URL whose driver is missing names the extra to install."""

import subprocess
import sys

from _common import POSTGRES

bin_dir = sys.executable.rsplit("/", 1)[0]
version = subprocess.run([f"{bin_dir}/poolwarden", "--version"], capture_output=True, text=True, check=True)
assert version.stdout.startswith("poolwarden "), version
check = subprocess.run([f"{bin_dir}/poolwarden", "check", POSTGRES], capture_output=True, text=True)
assert check.returncode == 1, check
assert "poolwarden[postgres]" in check.stdout, check
print("ok")
