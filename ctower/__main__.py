"""``python -m ctower`` is the ``ctower`` command."""

from ctower.cli import main

main()
