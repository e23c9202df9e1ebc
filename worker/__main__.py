"""``python -m worker`` is ``jitgate``."""

from worker.cli import main

main()
