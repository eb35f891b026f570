"""``python -m scalingnote.cli``."""

from scalingnote.cli import main

main()
