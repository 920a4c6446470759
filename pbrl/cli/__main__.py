"""``python -m pbrl.cli``: the ``pbrl`` command without its installed entry point."""

import sys

from pbrl.cli import main

sys.exit(main())
