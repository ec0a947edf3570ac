"""Lightning callbacks of orthoreg-pl, installed as ``orthoreg_pl.callbacks`` (pyproject.toml maps this
folder there, so no top-level ``callbacks`` package can collide with another distribution's);
referenced from configs/callbacks/*.yaml."""
