"""A run's life on disk and in the process: its identity (identity.py), its folder and meta.json
(folder.py), the lock of the job that owns it (lock.py), signals and resume while it trains
(lifecycle.py), how a job ends (job.py), the outcomes of a multirun (outcomes.py) and its loggers
(loggers.py).

Light on purpose: identity.py is read when a command line is composed, before torch loads.
"""
