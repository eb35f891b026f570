"""``python -m scalingnote``."""

from scalingnote.cli import main

main()
