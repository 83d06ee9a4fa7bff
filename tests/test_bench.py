"""The ``bench/`` scripts still start: each one's ``--help``, and a small real run of the inference benchmark.

They are not run by CI otherwise, so a renamed function broke ``bench_infer.py`` unnoticed (it imported
``inference._tile_spans``, which had become ``tile_spans``).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from lit_sr.paths import REPO

BENCH = REPO / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")


def run_script(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their `common` module
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
    runpy.run_path(str(BENCH / name), run_name="__main__")


def test_the_bench_folder_has_its_scripts():
    assert {"bench_infer.py", "bench_train.py", "run_all.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_bench_script_starts_and_prints_its_usage(name, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        run_script(name, "--help", monkeypatch=monkeypatch)
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_inference_benchmark_runs_and_writes_its_table(tmp_path: Path, data_root, monkeypatch, capsys):
    out = tmp_path / "infer.md"
    run_script("bench_infer.py", "--sizes", "256", "--tile", "40", "--overlap", "4", "--methods", "vdsr",
               "--markdown", str(out), monkeypatch=monkeypatch)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| vdsr ")]
    assert len(rows) == 1 and "| 256² |" in rows[0], out.read_text()
