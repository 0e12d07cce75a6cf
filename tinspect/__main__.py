"""``python -m tinspect`` is the ``tinspect`` command."""

import sys

from tinspect.cli.command import main

sys.exit(main())
