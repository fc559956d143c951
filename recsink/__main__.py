"""``python -m recsink``: the same as the ``recsink`` command."""

import sys

from recsink.cli import main

sys.exit(main())
