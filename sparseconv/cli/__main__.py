"""``python -m sparseconv.cli ...`` (what ``torchrun -m sparseconv.cli train ...`` runs)."""

import sys

from sparseconv.cli import console

sys.exit(console())
