"""``python -m difftre_torch`` is the ``difftre`` console script."""

import sys

from difftre_torch.cli import main

if __name__ == "__main__":
    sys.exit(main())
