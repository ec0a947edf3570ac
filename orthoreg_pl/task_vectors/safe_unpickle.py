"""Reading tensors out of ``torch.save`` files without running anything the file names.

The authors' standard-mode checkpoints pickle a whole ``ImageEncoder`` module: ``torch.load`` with
``weights_only=True`` refuses them, and ``weights_only=False`` would import and call whatever the
pickle names (a crafted file runs arbitrary code). This unpickler resolves only torch's tensor
rebuild functions, storages, dtypes and plain containers; every other global becomes an inert
:class:`PickledObject` placeholder that records its module path, name and the state the pickle gave
it. Calling a global (pickle's REDUCE) is allowed only for the functions of ``_CALLABLE`` and for the
value classes of ``_RECORDED_CALLS`` (enums: recorded, never called); any other call is refused with
an error naming the file and the global. Nothing the pickle names is ever imported.

Reading is bounded by what the file declares: the zip directory is checked against the file first
(:func:`orthoreg_pl.utils.safe_load.inspect_archive`), each storage record is streamed up to the
size the pickle declares for it (a record that would inflate beyond is never inflated), and the
module records are walked without recursion, at most :data:`MAX_MODULE_DEPTH` deep.
"""

from __future__ import annotations

import collections
import io
import pickle
import reprlib
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthoreg_pl.errors import OrthoRegError
from orthoreg_pl.utils.safe_load import TorchArchive, inspect_archive, read_record

# Globals a pickle may call: tensor rebuilds and plain containers (each checked by a wrapper below).
_REBUILD_TENSOR = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}
_REBUILD_PARAMETER = {
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}
# Value classes a module's attributes hold (transform settings): a call becomes a record, nothing runs.
_RECORDED_CALLS = {
    ("torchvision.transforms.functional", "InterpolationMode"),
    ("torchvision.transforms", "InterpolationMode"),
    ("functools", "partial"),
}
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol-2 names of Python 2
MAX_MODULE_DEPTH = 100  # an open_clip ViT nests 6 deep; a deeper chain is a crafted file
MAX_MODULE_RECORDS = 1 << 16  # a ViT-L has about 500 modules
_REPR = reprlib.Repr()  # bounded depth (maxlevel): a deeply nested payload cannot recurse
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


class PickledObject:
    """An inert stand-in for an object of a class the file names: what the pickle said about it."""

    def __init__(self, module: str, name: str, args: tuple = ()) -> None:
        self.module, self.name, self.args = module, name, args
        self.state: Any = None
        self.items: list = []  # APPEND/SETITEM data of list or dict subclasses

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __setstate__(self, state: Any) -> None:  # BUILD: store, never interpret
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def attributes(self) -> dict:
        """The instance dict the pickle restored (state may be ``(dict, slots)``)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}>"


class _Global(type):
    """Metaclass of the placeholder classes: creating an instance (NEWOBJ) makes an inert record;
    calling the class (REDUCE) is refused unless the global is one of ``_RECORDED_CALLS``."""

    source: str
    module: str
    global_name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        if (cls.module, cls.global_name) in _RECORDED_CALLS:
            return PickledObject(cls.module, cls.global_name, args)
        raise OrthoRegError(
            f"{cls.source}: the pickle calls {cls.module}.{cls.global_name} (arguments {_short(args)}); refused: only "
            "tensor rebuilds and plain containers are run when reading a checkpoint (nothing executed)"
        )


def _placeholder(source: str, module: str, name: str) -> type:
    def new(cls, *args: Any, **kwargs: Any) -> PickledObject:
        return PickledObject(cls.module, cls.global_name, args)

    return _Global(
        f"Pickled_{name}",
        (),
        {"__new__": new, "source": source, "module": module, "global_name": name},
    )


def _short(args: tuple) -> str:
    text = _REPR.repr(args)
    return text if len(text) <= 80 else text[:77] + "...)"


class _StorageKind:
    """What ``torch.FloatStorage`` & co. resolve to: only the element type of a storage record."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype


class _Storage:
    """A storage read from the zip file: raw bytes and the element type the pickle declared."""

    def __init__(self, data: torch.UntypedStorage, dtype: torch.dtype) -> None:
        self.data, self.dtype = data, dtype


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
# Looked up by name only: ``getattr(torch, name)`` for a name the file chose could import a submodule.
_DTYPE_NAMES = frozenset(
    "float32 float float64 double float16 half bfloat16 complex64 cfloat complex128 cdouble "
    "uint8 int8 int16 short int32 int int64 long bool".split()
)


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are resolved by :meth:`find_class` alone (nothing imported)."""

    def __init__(self, file: io.BytesIO, source: str, storage: Callable[[str, torch.dtype, int], _Storage]):
        super().__init__(file)
        self.source = source
        self._storage = storage
        self._placeholders: dict[tuple[str, str], type] = {}  # one class per global, however often named

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        key = (module, name)
        if key in _REBUILD_TENSOR:
            return self._rebuild_tensor
        if key in _REBUILD_PARAMETER:
            return self._rebuild_parameter
        if key == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if key in {("builtins", "set"), ("builtins", "frozenset")}:
            return self._container(set if name == "set" else frozenset)
        if key == ("torch", "Size"):
            return self._container(torch.Size)
        if key == ("torch", "device"):
            return self._device
        if key == ("_codecs", "encode"):
            return self._encode
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(name, _STORAGE_DTYPES[name])
        if key not in self._placeholders:
            self._placeholders[key] = _placeholder(self.source, module, name)
        return self._placeholders[key]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise OrthoRegError(
                f"{self.source}: unexpected persistent id {_short((pid,))}; expected a storage"
            )
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageKind) or not isinstance(numel, int) or numel < 0:
            raise OrthoRegError(f"{self.source}: malformed storage record {_short(pid)}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        return self._storage(key, kind.dtype, numel)

    # ---- the only functions a pickle may call ----------------------------------------------------

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Tensor:
        """``torch._utils._rebuild_tensor_v2`` without hooks or metadata: a CPU view of the storage."""
        ok = (
            isinstance(storage, _Storage)
            and isinstance(offset, int)
            and isinstance(size, tuple | torch.Size)
            and isinstance(stride, tuple | torch.Size)
            and len(size) == len(stride)
            and all(isinstance(n, int) for n in (*size, *stride))
        )
        if not ok or offset < 0 or any(n < 0 for n in (*size, *stride)):
            raise OrthoRegError(f"{self.source}: malformed tensor record {_short((offset, size, stride))}")
        available = storage.data.nbytes() // storage.dtype.itemsize
        needed = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if needed > available:  # set_ would grow the storage instead of failing
            raise OrthoRegError(
                f"{self.source}: a tensor of size {tuple(size)} needs {needed} elements, its storage has {available}"
            )
        return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, size, stride)

    def _rebuild_parameter(self, data: Any, *rest: Any) -> Tensor:
        if not isinstance(data, Tensor):
            raise OrthoRegError(
                f"{self.source}: a parameter record holds {type(data).__name__}, not a tensor"
            )
        return data

    def _container(self, kind: type) -> Callable[..., Any]:
        def build(*args: Any) -> Any:
            if len(args) > 1 or (args and not isinstance(args[0], list | tuple | set | frozenset)):
                raise OrthoRegError(f"{self.source}: {kind.__name__}{_short(args)} is not a plain container")
            return kind(*args)

        return build

    def _device(self, *args: Any) -> torch.device:
        if not args or not all(isinstance(a, str | int) for a in args):
            raise OrthoRegError(f"{self.source}: torch.device{_short(args)} refused")
        return torch.device("cpu")  # every tensor is read to the CPU

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            raise OrthoRegError(f"{self.source}: _codecs.encode{_short((text, encoding))} refused")
        return text.encode("latin1")


def safe_load(path: str | Path) -> Any:
    """The object a ``torch.save`` zip file holds: tensors (on the CPU), plain containers, and
    :class:`PickledObject` records for every other class. Raises OrthoRegError for anything else,
    before allocating more than the file declares (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise OrthoRegError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise OrthoRegError(
            f"{path} is not a torch.save zip file (torch >= 1.6); the legacy format is not supported"
        )
    archive = inspect_archive(path, "checkpoint")
    try:
        return _load_archive(archive)
    except OrthoRegError:
        raise
    except Exception as err:  # a malformed file raises many types (zip, pickle, EOF); none is a bug of ours
        raise OrthoRegError(f"cannot read {path} as a checkpoint ({type(err).__name__}: {err})") from None


def _load_archive(checked: TorchArchive) -> Any:
    path, root, records = checked.path, checked.root, checked.records
    with zipfile.ZipFile(path) as archive:
        order = records.get(root + "byteorder")
        if order is not None and order.file_size > len("little"):
            raise OrthoRegError(
                f"{path}: its byteorder record holds {order.file_size} bytes; expected little or big"
            )
        byteorder = read_record(archive, order, order.file_size, str(path)).decode() if order else "little"
        loaded: dict[str, torch.UntypedStorage] = {}

        def storage(key: str, dtype: torch.dtype, numel: int) -> _Storage:
            nbytes = numel * dtype.itemsize
            if key not in loaded:
                record = records.get(f"{root}data/{key}")
                if record is None:
                    raise OrthoRegError(f"{path}: storage {key} is missing from the archive")
                raw = read_record(archive, record, nbytes, str(path))  # never more than the pickle declares
                data = (
                    torch.frombuffer(raw, dtype=torch.uint8).untyped_storage()
                    if raw
                    else torch.UntypedStorage(0)
                )
                if byteorder != sys.byteorder:
                    data.byteswap(dtype)
                loaded[key] = data
            return _Storage(loaded[key], dtype)

        pickled = records[checked.pickle]
        data = read_record(archive, pickled, pickled.file_size, str(path))
        return SafeUnpickler(io.BytesIO(data), str(path), storage).load()


def module_state_dict(
    record: PickledObject, prefix: str = "", source: str = "the checkpoint"
) -> tuple[dict[str, Tensor], set[str]]:
    """(name → tensor, names that are parameters) of a pickled ``nn.Module`` record, by walking its
    ``_parameters``, ``_buffers`` (persistent ones) and ``_modules`` as ``state_dict()`` would:
    without recursion, refusing a tree deeper than :data:`MAX_MODULE_DEPTH` or with more than
    :data:`MAX_MODULE_RECORDS` modules (a crafted chain, cycle or fan of shared records)."""
    tensors: dict[str, Tensor] = {}
    parameters: set[str] = set()
    stack: list[tuple[PickledObject, str, int]] = [(record, prefix, 0)]
    visited = 0
    while stack:
        node, at, depth = stack.pop()
        visited += 1
        if depth > MAX_MODULE_DEPTH or visited > MAX_MODULE_RECORDS:
            limit = (
                f"nest deeper than {MAX_MODULE_DEPTH} levels"
                if depth > MAX_MODULE_DEPTH
                else f"hold more than {MAX_MODULE_RECORDS} modules"
            )
            raise OrthoRegError(
                f"{source}: its module records {limit} (at {at[:60]}...); refused: not a model"
            )
        attrs = node.attributes()
        for name, value in _mapping(attrs.get("_parameters")).items():
            if isinstance(value, Tensor):
                tensors[at + name] = value
                parameters.add(at + name)
        skipped = attrs.get("_non_persistent_buffers_set") or set()
        for name, value in _mapping(attrs.get("_buffers")).items():
            if isinstance(value, Tensor) and name not in skipped:
                tensors[at + name] = value
        children = [
            (n, c) for n, c in _mapping(attrs.get("_modules")).items() if isinstance(c, PickledObject)
        ]
        for name, child in reversed(children):  # popped in order: names come out as state_dict() gives them
            stack.append((child, f"{at}{name}.", depth + 1))
    return tensors, parameters


def _mapping(value: Any) -> Mapping:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, PickledObject):  # a dict subclass restored by SETITEMS
        return dict(item for item in value.items if isinstance(item, tuple) and len(item) == 2)
    return {}


__all__ = ["PickledObject", "SafeUnpickler", "module_state_dict", "safe_load"]
