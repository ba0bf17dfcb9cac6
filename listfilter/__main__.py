"""``python -m listfilter``: the same as the ``listfilter`` command."""

from .launcher import main

main()
