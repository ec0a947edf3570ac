"""``python -m orthoreg_pl.report DIR...``: the tables of the finished runs and merge reports below DIRs."""

import sys

from orthoreg_pl.report.tables import main

sys.exit(main())
