"""orthoreg-pl: task arithmetic with OrthoReg on PyTorch Lightning + Hydra.

The packages are layers, read top to bottom; each imports only from the layers below it
(pyproject.toml's import-linter contract, checked by ``make lint`` and ``make test``):

    cli -> campaign -> report -> training | evaluation -> callbacks -> analysis | modules | merging
    -> task_vectors -> config -> runs | models -> data -> penalties | utils -> errors

Importing the package registers the resolvers every config uses (config/resolvers.py).
"""

import importlib.util
import sys
import warnings
from pathlib import Path

from orthoreg_pl.config.resolvers import register_resolvers
from orthoreg_pl.errors import OrthoRegError


def _map_checkout_callbacks() -> None:
    """pip installs the checkout's ``callbacks/`` folder as ``orthoreg_pl.callbacks`` (pyproject.toml).
    A checkout used without installing (``PYTHONPATH=.``, as on a bare GPU machine) gets the same
    mapping here, so configs name ``orthoreg_pl.callbacks...`` either way."""
    name = f"{__name__}.callbacks"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "callbacks"
    if not (folder / "__init__.py").is_file() or not (folder.parent / "pyproject.toml").is_file():
        return
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


register_resolvers()
_map_checkout_callbacks()
# configs/hydra/launcher/joblib.yaml (and ray.yaml) set a plugin's fields under the plugin's own config
# name, so Hydra checks them against the plugin's schema (wanted) and calls that check deprecated.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")

__version__ = "0.1.0"
__all__ = ["OrthoRegError", "__version__"]
