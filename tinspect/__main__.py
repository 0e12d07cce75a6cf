"""``python -m tinspect`` is the ``tinspect`` command."""

import sys

from tinspect.cli import main

sys.exit(main())
