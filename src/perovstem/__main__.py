"""``python -m perovstem`` runs the command line."""

import sys

from perovstem.cli.main import main

sys.exit(main())
