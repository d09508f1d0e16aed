"""``python -m p2phier``: the same entry point as the ``p2phier`` console script."""

from __future__ import annotations

from p2phier.cli.main import main

raise SystemExit(main())
