"""Merging and scoring task vectors: ``merge.py`` -> :func:`pipeline.run_merge`.

pipeline (runs -> vectors -> report) · selection (which runs, and the checks that they fit) ·
validation (merge.py's rules) · evaluator (encoder, heads, loaders built once; references) · engine
(θ0 + α·τ in place, the whole α grid per pass) · references (zero-shot and fine-tuned accuracies,
cached) · protocols/ (addition, negation, single_task, analysis) · alphas (the α-selection rules) ·
curves (α curves of existing reports) · disentanglement (ξ on the engine) · report_files
(report.json/md/csv, plot) · report_logging, figure_logging (W&B).
"""
