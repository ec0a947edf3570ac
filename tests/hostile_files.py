"""Hostile files for the integrity tests (tests/test_hostile_input.py) and benchmarks/zip_bomb.py.

Each is written the way an attacker (or a broken tool) would: a ``torch.save`` zip whose storage
record inflates far beyond what its pickle declares, a pickle of module records nested deeper than
any model, checkpoints of integer or half-precision weights. The pickled modules name a class of a
module that does not exist (``src.modeling.ImageEncoder``, as the authors' checkpoints do), so only
the restricted unpickler can read them.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

FAKE_MODULE = "src.modeling"


@contextlib.contextmanager
def _fake_modeling() -> Iterator[type]:
    """``src.modeling.ImageEncoder`` importable only inside the block (what torch.save pickles by name)."""
    package, module = ModuleType("src"), ModuleType(FAKE_MODULE)
    encoder = type("ImageEncoder", (nn.Module,), {"__module__": FAKE_MODULE})
    module.ImageEncoder = encoder
    package.modeling = module
    saved = {name: sys.modules.get(name) for name in ("src", FAKE_MODULE)}
    sys.modules.update({"src": package, FAKE_MODULE: module})
    try:
        yield encoder
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


def save_pickled_module(model: nn.Module, path: Path) -> Path:
    """``torch.save`` of an ImageEncoder wrapping ``model`` (the authors' standard-mode format)."""
    with _fake_modeling() as encoder_class:
        encoder = encoder_class()
        encoder.model = model
        torch.save(encoder, path)
    return path


def inflate_largest_record(src: Path, dst: Path, inflated: int, level: int = 1) -> str:
    """Copy the torch zip ``src`` to ``dst`` with its largest storage record replaced by ``inflated``
    zero bytes, deflated: the pickle still declares the record's real size. Returns the record's name."""
    with zipfile.ZipFile(src) as archive:
        infos = archive.infolist()
        target = max((i for i in infos if "/data/" in i.filename), key=lambda i: i.file_size)
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as out:
            for info in infos:  # the others keep their own ZipInfo: stored, as torch.save wrote them
                if info.filename != target.filename:
                    out.writestr(info, archive.read(info))
                    continue
                zeros = bytes(64 << 20)
                with out.open(info.filename, "w", force_zip64=inflated >= zipfile.ZIP64_LIMIT) as stream:
                    left = inflated
                    while left:
                        stream.write(zeros[: min(left, len(zeros))])
                        left -= min(left, len(zeros))
    return target.filename


def _torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as torch.save lays it out, around a hand-made data.pkl."""
    with zipfile.ZipFile(path, "w") as out:
        out.writestr("archive/data.pkl", data_pkl)
        out.writestr("archive/byteorder", sys.byteorder)
        for name, data in (records or {}).items():
            out.writestr(f"archive/data/{name}", data)
        out.writestr("archive/version", "3\n")
    return path


def _unicode(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def deep_module_pickle(path: Path, depth: int) -> Path:
    """Module records nested ``depth`` deep (``m.m.m...``), written opcode by opcode: pickle's own
    writer (and a recursive reader) cannot go that deep. The innermost module holds one parameter,
    so a reader that got through would find a state dict."""
    new_module = pickle.BINGET + b"\x00" + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.EMPTY_DICT
    opening = new_module + _unicode("_modules") + pickle.EMPTY_DICT + _unicode("m")
    closing = pickle.SETITEM + pickle.SETITEM + pickle.BUILD  # {"m": child}, state["_modules"], BUILD
    storage = pickle.MARK + _unicode("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n"
    storage += _unicode("0") + _unicode("cpu") + pickle.BININT1 + b"\x01" + pickle.TUPLE + pickle.BINPERSID
    one = pickle.BININT1 + b"\x01" + pickle.TUPLE1
    tensor = pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK + storage
    tensor += pickle.BININT1 + b"\x00" + one + one + pickle.NEWFALSE + pickle.EMPTY_DICT + pickle.TUPLE
    tensor += pickle.REDUCE
    leaf = new_module + _unicode("_parameters") + pickle.EMPTY_DICT + _unicode("weight") + tensor + closing
    body = io.BytesIO()
    body.write(pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{FAKE_MODULE}\nImageEncoder\n".encode())
    body.write(pickle.BINPUT + b"\x00" + pickle.POP)
    body.write(opening * depth + leaf + closing * depth + pickle.STOP)
    return _torch_zip(path, body.getvalue(), {"0": struct.pack("<f", 1.0)})


__all__ = ["deep_module_pickle", "inflate_largest_record", "save_pickled_module"]
