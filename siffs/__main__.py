"""``python -m siffs`` runs the command-line interface."""

from siffs.cli.main import entry

entry()
