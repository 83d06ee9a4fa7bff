"""Read back what an offline W&B run logged: history, summary, config, name, group, tags.

Offline runs land in ``<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``; wandb 0.31 writes no
summary or config file offline, and ships no Python reader for this file, so it is parsed here.
Format: a 7-byte header (``:W&B``, uint16 0xBEE1, uint8 version), then LevelDB-log framing in 32 KiB
blocks counted from the start of the file. Each chunk has a 7-byte header ``<IHB`` (checksum, length,
type 1 full / 2 first / 3 middle / 4 last); a block tail shorter than 7 bytes is zero padding. The
checksum is zlib's CRC-32 of the type byte followed by the data (not LevelDB's masked CRC-32C). A
complete record is one ``wandb_internal_pb2.Record`` protobuf message.

Used by tests and by users checking what a run really logged, without a W&B account.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_IDENT = b":W&B"
_MAGIC = 0xBEE1
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_RUN_DIR = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-")


@dataclass
class OfflineRun:
    """What one run logged. History rows and summary keys are flat: nested keys joined with ``.``."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False  # the run's exit record is in the file: nothing more will be written

    def series(self, key: str) -> list[Any]:
        """Values of history ``key`` in logging order (rows without the key are skipped)."""
        values = [row[key] for row in self.history if key in row]
        if not values:
            known = sorted({k for row in self.history for k in row})
            raise KeyError(f"history key {key!r} was never logged in {self.path}; logged keys: {known}")
        return values


def find_runs(root: str | Path) -> list[Path]:
    """The ``.wandb`` files below ``root`` (a save dir, its ``wandb/`` folder or a run folder), oldest first.

    Runs are ordered by the start time in their folder name (``offline-run-20250101_120000-<id>``),
    then by file modification time. Returns an empty list when there is none.
    """
    root = Path(root)
    if root.is_file() and root.suffix == ".wandb":
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(
            f"W&B run folder not found: {root} (pass the save_dir / dir given to W&B, which holds "
            f"wandb/offline-run-*/run-*.wandb)"
        )
    files = {p.resolve() for p in root.rglob("*.wandb") if p.is_file()}
    return sorted(files, key=_start_key)


def _start_key(path: Path) -> tuple[str, float, str]:
    mtime = path.stat().st_mtime
    match = _RUN_DIR.match(path.parent.name)
    stamp = match.group(1) if match else datetime.fromtimestamp(mtime).strftime("%Y%m%d_%H%M%S")
    return stamp, mtime, str(path)


def read_run(path: str | Path) -> OfflineRun:
    """Parse one ``run-<id>.wandb`` file; given a folder, the newest run below it."""
    path = Path(path)
    if path.is_dir():
        runs = find_runs(path)
        if not runs:
            raise FileNotFoundError(
                f"no W&B run (*.wandb file) below {path}; was the run logged with dir={path}?"
            )
        path = runs[-1]
    elif not path.is_file():
        raise FileNotFoundError(f"W&B run file not found: {path} (expected .../offline-run-*/run-<id>.wandb)")

    from wandb.proto import wandb_internal_pb2 as pb  # deferred: importing wandb takes about a second

    run = OfflineRun(path=path)
    for data in _records(path):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_key(item): _history_value(item) for item in record.history.item})
        elif kind == "summary":
            _apply_summary(run.summary, record.summary)
        elif kind == "config":
            _apply_config(run.config, record.config)
        elif kind == "exit":
            run.finished = True
        elif kind == "run":
            r = record.run
            run.run_id = r.run_id or run.run_id
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.project = r.project or run.project
            run.tags = list(r.tags) or run.tags
            _apply_config(run.config, r.config)
            _apply_summary(run.summary, r.summary)
    return run


def read_finished(path: str | Path, timeout: float = 60.0) -> OfflineRun:
    """``read_run`` once the run's exit record is written.

    wandb-core writes the file asynchronously: after ``wandb.finish()`` returns, or the run's process exits,
    it may still be flushing history, summary and config records for a few seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if (run := read_run(path)).finished:
                return run
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished W&B run below {path} after {timeout:g} s (no exit record)")
        time.sleep(0.2)


def _records(path: Path) -> Iterator[bytes]:
    """The complete records of a .wandb file; a chunk cut off at the end (a live or killed run) is dropped."""
    buf = path.read_bytes()
    if len(buf) < _FILE_HEADER.size:
        raise ValueError(f"{path} is not a W&B run file: only {len(buf)} bytes")
    ident, magic, version = _FILE_HEADER.unpack_from(buf)
    if ident != _IDENT or magic != _MAGIC:
        raise ValueError(f"{path} is not a W&B run file: header {buf[:7]!r}, expected {_IDENT!r} and 0xBEE1")
    pos = _FILE_HEADER.size
    pending: list[bytes] | None = None
    while True:
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER.size:
            pos += left_in_block  # zero padding at the block's end
        if pos + _CHUNK_HEADER.size > len(buf):
            return
        checksum, length, kind = _CHUNK_HEADER.unpack_from(buf, pos)
        start = pos + _CHUNK_HEADER.size
        data = buf[start : start + length]
        if len(data) < length:
            return
        if kind == 0 and length == 0 and checksum == 0:
            return  # zero-filled tail
        if zlib.crc32(data, zlib.crc32(bytes([kind]))) != checksum:
            raise ValueError(
                f"{path} is corrupt: bad checksum in the chunk at byte {pos} (format version {version}); "
                f"the records before it can still be read with wandb's own tools"
            )
        pos = start + length
        if kind == _FULL:
            pending = None
            yield data
        elif kind == _FIRST:
            pending = [data]
        elif kind == _MIDDLE and pending is not None:
            pending.append(data)
        elif kind == _LAST and pending is not None:
            pending.append(data)
            yield b"".join(pending)
            pending = None
        else:
            raise ValueError(f"{path} is corrupt: unexpected chunk type {kind} at byte {pos - length - 7}")


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _history_value(item: Any) -> Any:
    kind = item.WhichOneof("value")  # newer writers may use typed fields instead of value_json
    if kind is None:
        return json.loads(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _apply_summary(summary: dict[str, Any], record: Any) -> None:
    """Summary updates and removals, flat keys; W&B's internal ``_wandb.*`` entries are left out."""
    for item in record.update:
        key = _key(item)
        if key != "_wandb" and not key.startswith("_wandb."):
            summary[key] = json.loads(item.value_json)
    for item in record.remove:
        summary.pop(_key(item), None)


def _apply_config(config: dict[str, Any], record: Any) -> None:
    """Config updates and removals as a nested dict; W&B's internal ``_wandb`` entry is left out.

    The records hold plain values: the ``{"value": v}`` wrapping exists only in W&B's config.yaml and
    server API, so nothing is unwrapped here (a user's own ``{"value": ...}`` dict stays intact).
    """
    for item in record.update:
        path = [item.key] if item.key else list(item.nested_key)
        if path[0] == "_wandb":
            continue
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    for item in record.remove:
        path = [item.key] if item.key else list(item.nested_key)
        node = config
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
