import sys

from coop_rl.cli import main

sys.exit(main())
