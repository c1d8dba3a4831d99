"""`python -m lorafleet.controlplane ...` runs the control-plane CLI."""

import sys

from lorafleet.controlplane.cli import main

sys.exit(main())
