"""``lit-sr sweep``: an Optuna study of a sweep file, or its report.

    lit-sr sweep sweeps/cmsc.yaml [--workers N] [--storage URL] [--n-trials N] [--preset quick|paper]
    lit-sr sweep report sweeps/cmsc.yaml [--storage URL] [--top-k K] [--no-test]

Storage: ``--storage URL``, else ``$LIT_SR_SWEEP_STORAGE`` (keeps a password off the command line), else
``sqlite:///runs/sweeps/optuna.db`` (what ``make dashboard`` opens). The same command on several machines with
``--storage postgresql+psycopg2://user@host:port/db`` shares one study; running it again resumes the study up
to its n_trials.
"""

from __future__ import annotations

import argparse
import os
import sys

from lit_sr.errors import DEBUG_VAR, run_reporting_errors
from lit_sr.sweep.config import load_sweep
from lit_sr.typed import positive_int


def _parser(report: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-sr sweep" + (" report" if report else ""), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep file, e.g. sweeps/cmsc.yaml")
    p.add_argument("--preset", default=None, help="experiment preset the trials build on (default: the file's)")
    p.add_argument("--study-name", default=None, help="default: study.name of the file, or <method>-<preset>")
    p.add_argument("--root", default=None, help="folder of the study folders and the default SQLite file (runs/sweeps)")
    p.add_argument("--n-trials", type=positive_int, default=None, help="the study's total number of trials")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<root>/optuna.db)")
    if report:
        p.add_argument("--top-k", type=positive_int, default=None)
        p.add_argument("--no-test", action="store_true", help="skip the best trial's test table")
    else:
        p.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine")
        p.add_argument("--no-report", action="store_true", help="skip the report at the end")
        p.add_argument("--worker-index", type=int, default=0,
                       help="this machine's index, for the sampler's seed (e.g. a SLURM array index)")
        p.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)  # a worker of --workers N
    return p


def main(argv: list[str] | None = None) -> int:
    """``lit-sr sweep ...`` (``argv`` without ``sweep``); a user error prints ``lit-sr: error: ...``, code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_reporting_errors(_dispatch, argv, argv=argv, debug=os.environ.get(DEBUG_VAR) == "1")


def _dispatch(argv: list[str]) -> int:
    report = bool(argv) and argv[0] == "report"
    args = _parser(report).parse_args(argv[report:])
    sweep = load_sweep(args.sweep, args.preset, args.n_trials, args.study_name, args.storage, args.root)
    code = 0
    if not report:
        from lit_sr.sweep.study import run_sweep, run_worker

        spawned = args.spawned  # run_sweep created the study and printed its line
        code = run_worker(sweep, args.worker_index) if spawned else run_sweep(sweep, args.workers, args.worker_index)
        if code in (2, 130) or args.no_report:
            return code
    from lit_sr.sweep.report import report as write_report

    print(write_report(sweep, getattr(args, "top_k", None), test=not getattr(args, "no_test", False)), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
