"""``make bench``: every benchmark of lit_sr in one run, written to bench/results.md (+ quality.png).

Runs each script below in its own process, one after the other (so their timings do not overlap), logs its
output to bench/logs/<name>.log and collects its markdown table. Each ratio inside a section is measured
side by side within that section's single run. The header records the machine, the git commit and the load
average before and after (a shared machine shows there), and every section its wall and CPU time.

    python bench/run_all.py [--profile full|short|quick] [--only data overhead cpu precision infer eval quality]

``--profile short`` keeps every table and method with shorter measurements (for a machine shared with other
jobs); ``quick`` is a smoke run of a few minutes, not for quoting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402

#: (name, title, script, {profile: arguments}); "full" is make bench, "short" every table with shorter
#: measurements (for a shared machine), "quick" a smoke run
SECTIONS = [
    ("data", "1. Data pipeline: lit_sr vs naive vs naive with a decoded-image cache", "bench_data.py",
     {"full": ["--seconds", "8"], "short": ["--seconds", "4"], "quick": ["--seconds", "2"]}),
    ("overhead", "2. Lightning overhead: lit-sr fit vs a bare PyTorch loop", "bench_overhead.py",
     {"full": ["--steps", "200", "--repeats", "3"], "short": ["--steps", "50", "--warmup", "10", "--repeats", "1"],
      "quick": ["--steps", "40", "--warmup", "10", "--repeats", "1"]}),
    ("cpu", "3a. CPU training speed per method and setting", "bench_cpu.py",
     {"full": ["--seconds", "4"], "short": ["--seconds", "2", "--batches", "2"],
      "quick": ["--seconds", "1", "--methods", "vdsr", "--settings", "fp32", "bf16"]}),
    ("precision", "3b. PSNR cost of bf16 training", "bench_precision.py",
     {"full": ["--steps", "500"], "short": ["--steps", "60"], "quick": ["--steps", "40"]}),
    ("infer", "4. Inference time and peak memory (x4)", "bench_infer.py",
     {"full": ["--sizes", "512", "1024", "2048"], "short": ["--sizes", "512", "1024"],
      "quick": ["--sizes", "256", "512", "--methods", "vdsr"]}),
    ("eval", "4b. SSIM of the benchmark images: shifted sums vs float64 conv2d", "bench_eval.py",
     {"full": ["--repeats", "3"], "short": ["--repeats", "2"], "quick": ["--repeats", "1"]}),
    ("quality", "5. Quality per CPU minute", "bench_quality.py",
     {"full": ["--marks", "0.5", "1", "2"], "short": ["--marks", "0.25", "0.5"],
      "quick": ["--marks", "0.2", "--methods", "vdsr"]}),
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="full", choices=["full", "short", "quick"],
                        help="full (make bench), short (every table, shorter runs: a shared machine), quick (smoke)")
    parser.add_argument("--only", nargs="+", default=None, choices=[s[0] for s in SECTIONS])
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = HERE / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), _children_cpu()
    parts, timings = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, title, script, profiles in SECTIONS:
            section_args = profiles[args.profile]
            if args.only and name not in args.only:
                continue
            md = Path(tmp) / f"{name}.md"
            extra = ["--png", str(out.parent / "quality.png")] if name == "quality" else []
            cmd = [sys.executable, str(HERE / script), *section_args, "--markdown", str(md), *extra]
            print(f"== {title}: {' '.join(cmd[1:])}", flush=True)
            t0, c0 = time.perf_counter(), _children_cpu()
            with open(logs / f"{name}.log", "w") as log:
                code = subprocess.run(cmd, cwd=HERE.parent, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
            timings.append((name, wall, cpu, code))
            print(f"   {wall:.0f} s wall, {cpu:.0f} s CPU, exit {code}", flush=True)
            body = md.read_text() if md.is_file() else f"(failed with exit code {code}: see bench/logs/{name}.log)\n"
            parts.append(f"## {title}\n\n`python bench/{script} {' '.join(section_args)}` "
                         f"({wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU)\n\n{body}")
    total, total_cpu = time.perf_counter() - start, _children_cpu() - cpu_start
    load_after = os.getloadavg()
    header = (
        "# lit_sr benchmarks (`make bench`)\n\n"
        f"{dt.datetime.now().astimezone().isoformat(timespec='minutes')}, commit {_git_commit()}"
        f"{'' if args.profile == 'full' else f' (--profile {args.profile}: shorter measurements than make bench)'}"
        f". {machine()}.\n"
        f"Total {total / 60:.1f} min wall, {total_cpu / 60:.1f} min CPU. Load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, after {'/'.join(f'{x:.1f}' for x in load_after)}: a "
        f"load above {os.cpu_count()} means other jobs shared the cores and wall times are inflated.\n\n"
    )
    out.write_text(header + "\n".join(parts))
    print(f"wrote {out} ({total / 60:.1f} min wall)")
    if any(code for *_, code in timings):
        sys.exit(1)


if __name__ == "__main__":
    main()
