"""The paper's figures for your own runs, as pure functions and thin writers.

layers (which layer type a weight belongs to) · geometry (task-vector cosines, column angles and their
deviation from 90°, per-matrix penalty terms) · xi (the weight-disentanglement error ξ(α1, α2) counted
from predictions) · figures (PNG + CSV + JSON per figure) · markdown (the analysis report.md) · monitoring (the
training-time statistics). The evaluation that feeds ξ lives in ``orthoreg_pl.evaluation.disentanglement``,
the α curves of existing merge reports in ``evaluation/curves.py``, the merge protocol in
``evaluation/protocols/analysis.py``;
the training-time monitor in ``callbacks/orthogonality_monitor.py``. options.py holds what the command
line checks (without torch); nothing is imported here.
"""
