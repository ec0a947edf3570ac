"""``python -m orthoreg_pl.data check --root DIR [--tasks ...]`` (see orthoreg_pl/data/check.py)."""

from orthoreg_pl.data.check import main

raise SystemExit(main())
