"""``python -m bench``: the comparative benchmark harness (:mod:`bench.harness`)."""

import sys

from bench.harness import main

sys.exit(main())
