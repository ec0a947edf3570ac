"""Merging and scoring task vectors: ``merge.py`` -> :func:`pipeline.run_merge`.

pipeline (runs -> vectors -> report) · evaluator (encoder, heads, loaders built once) · engine (θ0 + α·τ
in place, the whole α grid per pass) · protocols/ (addition, negation, single_task) · alphas (the
α-selection rules) · report_files (report.json/md/csv, plot) · report_logging (W&B).
"""
