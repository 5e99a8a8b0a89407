import sys

from procbus.cli import main

sys.exit(main())
