"""``python -m tunesmith`` runs the CLI."""

from tunesmith.cli import main

main()
