"""``python -m recipes.gc3n4 [--quick] [OPTIONS]``: ``difftre refine`` on this folder's
``quick.yaml`` (``--quick``) or ``full.yaml``; every other option is ``difftre refine``'s."""

import sys
from pathlib import Path

from difftre_torch.cli import main

args = sys.argv[1:]
quick = "--quick" in args
args = [a for a in args if a != "--quick"]
config = Path(__file__).with_name("quick.yaml" if quick else "full.yaml")
if any(a in ("-h", "--help") for a in args):
    print(__doc__)
sys.exit(main(["refine", str(config), *args]))
