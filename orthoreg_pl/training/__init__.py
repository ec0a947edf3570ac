"""Fine-tuning runs: ``train.py`` -> :func:`fit.train`.

fit (one run: data -> model -> mode module -> Trainer -> run folder) · validation (train.py's rules) ·
trainer (the Trainer factory the trainer configs name) · strategies (FSDP fixed for repeated calls
and CPU processes). The callbacks live in the top-level ``callbacks/`` folder (``orthoreg_pl.callbacks``).

Nothing is imported here: importing one module of the package does not load the others.
"""
