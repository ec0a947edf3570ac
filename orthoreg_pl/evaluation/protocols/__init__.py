"""The evaluation protocols, one module each; every one declares a :class:`~.common.Protocol`:
``run(cfg, evaluator, vectors, alphas) -> body`` of the report (alphas, val_curves, val_at_alpha,
per_task, mean, ...), the objectives it offers and the rules of its options. ``protocol.name`` picks one.
"""

from orthoreg_pl.evaluation.protocols.addition import ADDITION
from orthoreg_pl.evaluation.protocols.analysis import ANALYSIS
from orthoreg_pl.evaluation.protocols.common import Protocol
from orthoreg_pl.evaluation.protocols.negation import NEGATION
from orthoreg_pl.evaluation.protocols.single_task import SINGLE_TASK

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (ADDITION, NEGATION, SINGLE_TASK, ANALYSIS)}

__all__ = ["PROTOCOLS", "Protocol"]
