"""The command line of ``train.py`` and ``merge.py``: compose and check it before Hydra runs the job
(precheck.py), and the ``--help`` listing of config groups (help.py). How a job then ends lives in
runs/job.py, shared with ``python -m orthoreg_pl.campaign``.
"""
