"""``python -m semiseg ...`` (and ``torchrun --nproc_per_node=N -m semiseg train ...``)."""
import sys

from semiseg.cli import main

sys.exit(main())
