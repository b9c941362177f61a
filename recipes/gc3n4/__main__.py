"""``python -m recipes.gc3n4``: see :mod:`recipes.gc3n4.pipeline`."""

import sys

from recipes.gc3n4.pipeline import main

sys.exit(main())
