"""``python -m service.cli``: the ``scalpel`` command."""

from service.cli.main import main

raise SystemExit(main())
