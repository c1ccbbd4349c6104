"""``python -m course_lib.capstone``: see :mod:`course_lib.capstone.cli`."""

import sys

from .cli import main

sys.exit(main())
