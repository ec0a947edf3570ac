"""orthoreg-pl: task arithmetic with OrthoReg on PyTorch Lightning + Hydra.

The flow a reader follows: ``train.py`` -> :mod:`orthoreg_pl.data` -> :mod:`orthoreg_pl.modules`
-> :mod:`orthoreg_pl.run_folder` -> ``merge.py``.
"""

from orthoreg_pl.config import register_resolvers
from orthoreg_pl.errors import OrthoRegError

register_resolvers()

__version__ = "0.1.0"
__all__ = ["OrthoRegError", "__version__"]
