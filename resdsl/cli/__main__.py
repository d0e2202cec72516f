"""`python -m resdsl.cli`."""

from . import main

main()
