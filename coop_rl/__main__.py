"""``python -m coop_rl``: the ``coop-rl`` command line (coop_rl.cli)."""

import sys

from coop_rl.cli import main

sys.exit(main())
