"""``torch.load`` that never executes code from the file, and says so in one line when a file needs it.

Every load passes ``weights_only=True`` explicitly: torch < 2.6 (which pyproject allows) defaults to
False, and Lightning passes None. A file that pickles classes or functions (a whole module, an
object with ``__reduce__``) is refused with what it names and how to convert it; the way out is
never ``weights_only=False``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from orthoreg_pl.errors import OrthoRegError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def unsafe_pickle_message(path: str | Path, what: str, err: BaseException) -> str:
    """One line: which file, what it would have run or built, how to get a loadable file."""
    found = _GLOBAL.search(str(err))
    names = f" (it names {found.group(1)})" if found else ""
    return (
        f"{what} {path} is refused: loading it needs arbitrary unpickling{names}, which can run code "
        "from the file. Convert it once where you trust it: save the tensors only "
        "(torch.save(model.state_dict(), ...) or safetensors); for the paper authors' released "
        "checkpoints use python -m orthoreg_pl.task_vectors.import_reference"
    )


def torch_load(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)``, errors as one OrthoRegError line."""
    path = Path(path)
    if not path.is_file():
        raise OrthoRegError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise OrthoRegError(unsafe_pickle_message(path, what, err)) from None
    except Exception as err:  # torch.load raises many types (zip, EOF, runtime) for unreadable files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OrthoRegError(f"{what} {path} is not a readable torch file ({first})") from None
