"""`python -m reconcile` runs the CLI."""

from .cli import main

main()
