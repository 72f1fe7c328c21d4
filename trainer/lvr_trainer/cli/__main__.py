import sys

from lvr_trainer.cli import main

sys.exit(main())
