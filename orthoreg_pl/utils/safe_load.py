"""``torch.load`` that never executes code from the file, reads no more than the file declares, and
says so in one line when a file needs either.

Every load passes ``weights_only=True`` explicitly: torch < 2.6 (which pyproject allows) defaults to
False, and Lightning passes None. A file that pickles classes or functions (a whole module, an
object with ``__reduce__``) is refused with what it names and how to convert it; the way out is
never ``weights_only=False``.

Before torch reads a file, its zip directory is checked against the file itself
(:func:`inspect_archive`): a record whose declared size the file cannot hold, records that overlap,
too many records, an oversized pickle, or a compressed record (``torch.save`` never compresses, and a
compressed record can inflate to any size) are refused, naming the file and the limit, before
anything is allocated. A truncated file is refused the same way (its zip directory is gone).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orthoreg_pl.errors import OrthoRegError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
MAX_RECORDS = 1 << 16  # a ViT-L checkpoint has about 1000; the zip directory is read whole
MAX_PICKLE_BYTES = 256 << 20  # data.pkl holds the structure only; tensors are records of their own
CHUNK = 1 << 20  # a record is streamed in pieces of this size, never inflated whole
_SUPPORTED = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


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


@dataclass(frozen=True)
class TorchArchive:
    """The checked zip directory of a ``torch.save`` file: its records by name, where data.pkl is."""

    path: Path
    records: dict[str, zipfile.ZipInfo]
    pickle: str  # the name of the data.pkl record
    compressed: bool  # some record is compressed (never by torch.save)

    @property
    def root(self) -> str:
        """What precedes ``data.pkl`` (``archive/``): the storages are ``<root>data/<key>``."""
        return self.pickle[: -len("data.pkl")]


def inspect_archive(path: str | Path, what: str = "file") -> TorchArchive:
    """The zip directory of ``path`` checked against the file before any record is read: every
    record lies inside the file, the records together take no more than the file does, at most
    :data:`MAX_RECORDS` of them, one data.pkl of at most :data:`MAX_PICKLE_BYTES`, only stored or
    deflated records. Raises OrthoRegError naming the file and the limit."""
    path = Path(path)
    if not path.is_file():
        raise OrthoRegError(f"{what} {path} does not exist")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise OrthoRegError(
            f"{what} {path} is not a whole torch.save zip file (truncated, or another format: {err})"
        ) from None
    if len(infos) > MAX_RECORDS:
        raise OrthoRegError(f"{what} {path} holds {len(infos)} zip records; the limit is {MAX_RECORDS}")
    for info in infos:
        _check_record(path, what, info, size)
    taken = sum(info.compress_size for info in infos)
    if taken > size:
        raise OrthoRegError(
            f"{what} {path}: its zip records declare {taken} bytes together, the file has {size} "
            "(records overlap); refused"
        )
    pickles = [i.filename for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise OrthoRegError(
            f"{what} {path} is a zip file without a single data.pkl ({len(pickles)} found); expected a torch.save file"
        )
    records = {i.filename: i for i in infos}
    if records[pickles[0]].file_size > MAX_PICKLE_BYTES:
        raise OrthoRegError(
            f"{what} {path}: its data.pkl declares {records[pickles[0]].file_size} bytes; the limit is "
            f"{MAX_PICKLE_BYTES} (the tensors are records of their own)"
        )
    compressed = any(i.compress_type != zipfile.ZIP_STORED for i in infos)
    return TorchArchive(path, records, pickles[0], compressed)


def _check_record(path: Path, what: str, info: zipfile.ZipInfo, size: int) -> None:
    if info.compress_type not in _SUPPORTED:
        raise OrthoRegError(
            f"{what} {path}: record {info.filename} uses zip compression method {info.compress_type}; "
            "expected stored or deflated"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise OrthoRegError(
            f"{what} {path}: stored record {info.filename} declares {info.file_size} bytes but takes "
            f"{info.compress_size}; refused"
        )
    if info.header_offset + info.compress_size > size:
        raise OrthoRegError(
            f"{what} {path}: record {info.filename} ends at byte {info.header_offset + info.compress_size}, "
            f"the file has {size} (truncated?)"
        )


def read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int, source: str) -> bytearray:
    """A record of exactly ``nbytes`` bytes (what the pickle declares for it), streamed into one
    buffer of that size: a record whose zip entry declares another size is refused before anything
    is allocated or inflated, and nothing beyond ``nbytes`` is ever inflated, whatever the record's
    data would inflate to (a lying entry fails its CRC check at the end)."""
    if info.file_size != nbytes:
        raise OrthoRegError(
            f"{source}: record {info.filename} declares {info.file_size} bytes, the pickle declares {nbytes}; "
            "refused before reading it"
        )
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    done = 0
    with archive.open(info) as stream:
        while done < nbytes:
            piece = stream.read(min(CHUNK, nbytes - done))
            if not piece:
                raise OrthoRegError(
                    f"{source}: record {info.filename} ends after {done} of its {nbytes} bytes (truncated or corrupt)"
                )
            view[done : done + len(piece)] = piece
            done += len(piece)
        stream.read(1)  # at the declared end: zipfile checks the record's CRC here
    return buffer


def torch_load(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` of a file :func:`inspect_archive`
    accepts without compressed records; errors as one OrthoRegError line naming the file."""
    path = Path(path)
    archive = inspect_archive(path, what)
    if archive.compressed:
        raise OrthoRegError(
            f"{what} {path} holds compressed zip records, which torch.save never writes and which could "
            "inflate to any size; refused (save it again with torch.save)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise OrthoRegError(unsafe_pickle_message(path, what, err)) from None
    except Exception as err:  # torch.load raises many types (zip, EOF, runtime) for unreadable files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OrthoRegError(f"{what} {path} is not a readable torch file ({first})") from None
