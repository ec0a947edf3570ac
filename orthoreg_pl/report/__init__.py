"""Tables of finished runs (meta.json) and merge reports (report.json): tables.py, and
``python -m orthoreg_pl.report DIR...`` (__main__.py)."""
