"""``python -m listfilter``: the same as the ``listfilter`` command."""

from .cli import main

main()
