"""``python -m siffs`` runs the command-line interface."""

import sys

from siffs.cli.main import main

sys.exit(main())
