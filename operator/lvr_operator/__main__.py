"""`python -m lvr_operator` = `lvr operator run`."""

import sys

from lvr_trainer.cli import main

sys.exit(main(["operator", "run", *sys.argv[1:]]))
