"""Read back what W&B wrote in offline mode (a test helper; nothing here touches the network).

wandb 0.31 writes runs through its Go core and ships no Python ``DataStore`` reader any more, so
this parses ``<wandb dir>/offline-run-<YYYYmmdd_HHMMSS>-<id>[-N]/run-<id>.wandb`` itself. The file
keeps the LevelDB-log framing wandb has always used: a 7-byte header (``b":W&B"``, magic ``0xBEE1``,
version 0), then 32 KiB blocks of chunks ``crc32: u32 | length: u16 | type: u8 | data`` (type
1 = whole record, 2/3/4 = first/middle/last piece; a block tail shorter than a chunk header is zero
padding). Each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``.

What the records hold (wandb 0.31):
* ``run``: id, name, group, job type and the ``wandb.init`` config (``_wandb`` included);
  ``config`` records carry later ``run.config`` updates and removals.
* ``history``: one per row; every value is JSON text (``value_json``, so a logged ``1.0`` reads
  back as ``1``) unless ``x_history_value_encoding`` asks for the typed form; a nested dict (e.g. a
  logged ``wandb.Table``) is split into items whose ``nested_key`` is its path.
* ``summary``: incremental updates (the history keys after each row, ``run.summary[...] = ...``);
  offline, the core keeps writing ``_runtime: 0``, so the summary's ``_runtime`` reads 0.
* ``artifact``: one per logged artifact (a logged ``wandb.Table`` adds ``run-<id>-<key>``).
* ``exit``: written by ``run.finish()``; a run that never finished has none.
The core writes the file in whole 32 KiB blocks: a live or hard-killed run shows only its full blocks
(a small run: nothing but the header).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_CHUNK = struct.Struct("<IHB")  # crc32, data length, chunk type
_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What one offline run folder holds, decoded from its ``.wandb`` file."""

    run_id: str
    name: str | None
    group: str | None
    job_type: str | None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    artifacts: list[str] = field(default_factory=list)


def offline_run_dirs(root: Path) -> list[Path]:
    """Every ``offline-run-*`` folder below ``root`` (recursive), sorted by name (= by start second)."""
    return sorted((p for p in Path(root).rglob("offline-run-*") if p.is_dir()), key=lambda p: p.name)


def iter_records(wandb_file: Path) -> Iterator[pb.Record]:
    """Yield every record of a ``.wandb`` file; a torn record at the end (run still writing) ends it."""
    data = Path(wandb_file).read_bytes()
    ident, magic, version = _FILE_HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{wandb_file}: not a wandb transaction log ({ident!r}, {magic:#x}, {version})")
    pos, pieces = _FILE_HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK.size:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        chunk = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        pos += _CHUNK.size + length
        if len(chunk) < length or (kind == 0 and length == 0):
            return  # torn tail or unused space
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{wandb_file}: bad checksum at byte {pos - length - _CHUNK.size}")
        pieces = chunk if kind in (_FULL, _FIRST) else pieces + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            yield record


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Decode the single ``run-<id>.wandb`` file of an ``offline-run-*`` folder."""
    (wandb_file,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun(run_id=wandb_file.stem.removeprefix("run-"), name=None, group=None, job_type=None)
    for record in iter_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id = r.run_id or run.run_id
            run.name = r.display_name or None
            run.group = r.run_group or None
            run.job_type = r.job_type or None
            _apply(run.config, r.config.update, r.config.remove)
        elif kind == "config":
            _apply(run.config, record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(run.summary, record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, _path(item), _value(item))
            run.history.append(row)
        elif kind == "artifact":
            run.artifacts.append(record.artifact.name)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    run.summary.pop("_wandb", None)
    return run


def read_offline_runs(root: Path, timeout: float = 30.0) -> list[OfflineRun]:
    """Every offline run below ``root``, once each has its exit record (or ``timeout`` seconds passed).

    ``wandb.finish()`` returns when the client is done; wandb's core process may still be writing the
    last block of the file, so a reader right after a run (or right after its process exited) waits."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [read_offline_run(d) for d in offline_run_dirs(root)]
        if all(r.exit_code is not None for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def _path(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _value(item: Any) -> Any:
    """A history item's typed value if it has one, else its JSON text decoded."""
    typed = item.WhichOneof("value") if isinstance(item, pb.HistoryItem) else None
    if typed in ("boolean", "integer", "number", "text"):
        return getattr(item, typed)
    if typed == "none":
        return None
    return json.loads(item.json if typed == "json" else item.value_json)


def _put(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value


def _apply(target: dict[str, Any], updates: Any, removes: Any) -> None:
    """Apply config/summary ``update`` items, then ``remove`` items, in the order they were written."""
    for item in updates:
        _put(target, _path(item), _value(item))
    for item in removes:
        *parents, last = _path(item)
        node = target
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)
