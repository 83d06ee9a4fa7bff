"""Helpers shared by the ``make bench`` scripts: presets, CPU time of a process tree, peak memory, tables."""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_sr.methods import registered_methods
from lit_sr.paths import REPO  # noqa: F401 - the bench scripts' repository root
from lit_sr.presets import preset_names, preset_path

#: the methods with a quick preset, in the order the tables list them
METHODS = ("vdsr", "lapsrn", "ms_lapsrn", "cmsc")


def preset(model: str, name: str = "quick") -> dict[str, Any]:
    """``experiments/<model>/<name>.yaml`` as a dict."""
    return yaml.safe_load(preset_path(model, name).read_text())


def build_method(model: str, name: str = "quick", **overrides: Any):
    """The preset's LightningModule, built from ``model.class_path`` and ``model.init_args`` (+ overrides)."""
    cfg = preset(model, name)["model"]
    module, _, cls = cfg["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), cls)(**{**cfg.get("init_args", {}), **overrides})


def available_methods() -> list[str]:
    """The methods of :data:`METHODS` that have a quick preset, then any newer preset folders."""
    found = sorted(m for m in registered_methods() if "quick" in preset_names(m))
    return [m for m in METHODS if m in found] + [m for m in found if m not in METHODS]


def _clock_ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def cpu_seconds_tree(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (default: this one) and all its live descendants.

    Reads /proc, so DataLoader workers count while they run; elsewhere falls back to this process only.
    """
    pid = os.getpid() if pid is None else pid
    proc = Path("/proc")
    if not proc.is_dir():
        return time.process_time()
    stats: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _clock_ticks())
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == current]
    return total


class Clock:
    """Wall and CPU (process tree) seconds since construction."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds_tree()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    @property
    def cpu(self) -> float:
        return cpu_seconds_tree() - self.cpu0


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so the baseline RSS holds no free blocks
    that a measured block could reuse unseen."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Peak resident memory of the block above the resident memory at its start, in MiB (``out["mib"]``).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so it counts every allocation
    (torch's CPU allocator returns large blocks to the OS). ``nan`` where /proc is unavailable.
    """
    out: dict[str, float] = {}
    _release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
    except OSError:
        base = None
    try:
        yield out
    finally:
        out["mib"] = float("nan") if base is None else (_status_kib("VmHWM") - base) / 1024


def machine() -> str:
    """One line saying what ran the benchmark."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def emit(text: str, markdown: str | None) -> None:
    """Print a section and, when asked, write it to ``markdown`` (what ``run_all.py`` collects)."""
    print(text)
    if markdown:
        Path(markdown).write_text(text)
