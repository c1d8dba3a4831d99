"""`python -m lorafleet.runtime`: the replica server (what the control plane launches)."""

import sys

from lorafleet.runtime.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
