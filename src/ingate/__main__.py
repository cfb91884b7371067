"""python -m ingate: the same as the `ingate` command."""

import sys

from ingate.cli import main

sys.exit(main())
