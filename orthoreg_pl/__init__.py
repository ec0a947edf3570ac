"""orthoreg-pl: task arithmetic with OrthoReg on PyTorch Lightning + Hydra.

The flow a reader follows: ``train.py`` -> :mod:`orthoreg_pl.data` -> :mod:`orthoreg_pl.modules`
-> :mod:`orthoreg_pl.run_folder` -> ``merge.py``.
"""

import warnings

from orthoreg_pl.config import register_resolvers
from orthoreg_pl.errors import OrthoRegError

register_resolvers()
# configs/hydra/launcher/joblib.yaml (and ray.yaml) set a plugin's fields under the plugin's own config
# name, so Hydra checks them against the plugin's schema (wanted) and calls that check deprecated.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")

__version__ = "0.1.0"
__all__ = ["OrthoRegError", "__version__"]
