"""`python -m atlas_fast.cli` and `torchrun -m atlas_fast.cli`: the `atlas-fast` command."""

import sys

from atlas_fast.cli import main

sys.exit(main())
