"""``python -m broker``: the same command as ``broker``."""

from broker.cli import main

raise SystemExit(main())
