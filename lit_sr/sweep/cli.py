"""``lit-sr sweep``: run an Optuna study of a method's sweep file, or report on one.

    lit-sr sweep sweeps/cmsc.yaml [--workers N] [--storage URL] [--n-trials N] [--preset quick|paper]
    lit-sr sweep report sweeps/cmsc.yaml|STUDY_NAME [--storage URL] [--top-k K] [--no-wandb]

Default storage: ``sqlite:///runs/sweeps/optuna.db`` (relative to the current folder, as ``make dashboard``
expects); ``--storage postgresql+psycopg2://user@host:port/db`` lets workers on many machines share one
study: run the same command on each. Running the command again resumes the study up to its n_trials.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lit_sr.errors import DEBUG_VAR, run_reporting_errors
from lit_sr.sweep.space import DEFAULT_ROOT, SweepError, load_sweep


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="experiment preset the trials build on (default: the file's)")
    p.add_argument("--study-name", default=None, help="default: the file's study.name or <method>-<preset>")
    p.add_argument("--root", default=None, help=f"folder of study folders and the default SQLite file ({DEFAULT_ROOT})")
    p.add_argument("--n-trials", type=int, default=None, help="the study's total number of trials")
    p.add_argument("--timeout", type=float, default=None, help="seconds per launch after which no trial starts")


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lit-sr sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sweep", help="sweep file, e.g. sweeps/cmsc.yaml")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<root>/optuna.db)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes on this study")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--no-wandb", action="store_true", help="report without the W&B summary run")
    _common(p)
    return p


def _worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-sr sweep _worker", description="internal: one worker process")
    p.add_argument("sweep")
    p.add_argument("--worker-index", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    _common(p)
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-sr sweep report", description="best trial, top-k table, plots, W&B run")
    p.add_argument("target", help="sweep file (sweeps/cmsc.yaml) or study name")
    p.add_argument("--storage", default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--no-wandb", action="store_true")
    _common(p)
    return p


def _load(args: argparse.Namespace, storage: str | None = None):
    return load_sweep(
        args.sweep,
        preset=args.preset,
        storage=storage,
        n_trials=args.n_trials,
        study_name=args.study_name,
        root=args.root,
        timeout=args.timeout,
    )


def _worker_args(args: argparse.Namespace, sweep) -> list[str]:
    out = [
        str(sweep.path),
        "--preset",
        sweep.preset,
        "--study-name",
        sweep.study_name,
        "--root",
        str(sweep.root),
        "--n-trials",
        str(sweep.n_trials),
    ]
    return out + (["--timeout", str(sweep.timeout)] if sweep.timeout is not None else [])


def cmd_run(argv: list[str]) -> int:
    from lit_sr.sweep.study import INTERRUPTED, run_sweep

    args = _run_parser().parse_args(argv)
    sweep = _load(args, args.storage)
    code = run_sweep(sweep, args.workers, _worker_args(args, sweep))
    if code == INTERRUPTED:
        print(f"interrupted: run the same command again to resume the study {sweep.study_name}", flush=True)
    elif not args.no_report:
        code = max(
            code,
            _report(
                sweep.storage_url,
                sweep.study_name,
                sweep.study_dir,
                sweep.metric,
                sweep.top_k,
                sweep.method,
                not args.no_wandb,
            ),
        )
    return code


def cmd_worker(argv: list[str]) -> int:
    from lit_sr.sweep.study import run_worker

    args = _worker_parser().parse_args(argv)
    return run_worker(_load(args), args.worker_index, args.workers)


def cmd_report(argv: list[str]) -> int:
    args = _report_parser().parse_args(argv)
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml"):
        sweep = load_sweep(target, preset=args.preset, storage=args.storage, study_name=args.study_name, root=args.root)
        return _report(
            sweep.storage_url,
            sweep.study_name,
            sweep.study_dir,
            sweep.metric,
            args.top_k or sweep.top_k,
            sweep.method,
            not args.no_wandb,
        )
    root = Path(args.root) if args.root else DEFAULT_ROOT
    url = args.storage or f"sqlite:///{root / 'optuna.db'}"
    return _report(url, args.target, None, None, args.top_k, None, not args.no_wandb, root)


def _report(
    url: str,
    name: str,
    study_dir: Path | None,
    metric: str | None,
    top_k: int | None,
    method: str | None,
    log_wandb: bool,
    root: Path | None = None,
) -> int:
    import optuna

    from lit_sr.sweep.report import format_report, write_report
    from lit_sr.sweep.study import make_storage, sqlite_path

    db = sqlite_path(url)
    if db is not None and not db.is_file():
        raise SweepError(f"no study storage at {db}: run `lit-sr sweep <sweep file>` first, or pass --storage URL")
    storage = make_storage(url)
    known = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in known:
        raise SweepError(f"no study {name!r} in {url}; studies there: {known}")
    study = optuna.load_study(study_name=name, storage=storage)
    settings = study.user_attrs.get("sweep", {})
    if study_dir is None:
        study_dir = Path(settings.get("root") or root or DEFAULT_ROOT) / name
    result = write_report(
        study,
        study_dir / "report",
        metric=metric or settings.get("metric", "val/psnr_y"),
        top_k=top_k or settings.get("top_k", 5),
        method=method or settings.get("method"),
        log_wandb=log_wandb,
    )
    print(format_report(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lit-sr sweep ...`` (``argv`` without the leading ``sweep``); a user error (``SweepError``, an unreachable
    storage) prints one line ``lit-sr: error: ...`` and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_reporting_errors(_dispatch, argv, argv=argv, debug=os.environ.get(DEBUG_VAR) == "1")


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return cmd_report(argv[1:])
    if argv and argv[0] == "_worker":
        return cmd_worker(argv[1:])
    return cmd_run(argv)


if __name__ == "__main__":
    sys.exit(main())
