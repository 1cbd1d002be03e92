"""``python -m recarena`` = the ``recarena`` command."""

from recarena.cli import main

raise SystemExit(main())
