"""``python -m fieldkit``: the ``fieldkit`` command (what ``accelerate launch -m fieldkit ...`` runs)."""

from fieldkit.cli import main

main()
