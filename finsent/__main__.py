"""``python -m finsent``: the same command line as the ``finsent`` script."""

import sys

from finsent.cli import main

sys.exit(main())
