"""A study's report in ``<root>/<study>/report/``, also logged as the study's W&B run (group = study, name report).

``top_k.md``, ``trials.json``, ``<plot>.png`` (matplotlib) and ``<plot>.html`` (plotly) of the optimization
history, parameter importances, parallel coordinates and intermediate values, and ``test/results.{md,json}``:
the best trial's checkpoint on the test sets. It was chosen on the validation metric; the test is only reported.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lit_sr.sweep.config import Sweep, SweepError
from lit_sr.sweep.study import describe, make_storage
from lit_sr.tables import markdown_table

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first."""
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (sign * t.value, t.number))


def trials_table(trials: list[FrozenTrial], metric: str) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the ranked trials: rank, trial, metric, every knob, duration in seconds."""
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = [[i + 1, t.number, t.value, *(t.params.get(n) for n in names),
             round(t.duration.total_seconds()) if t.duration else None] for i, t in enumerate(trials)]
    return ["rank", "trial", metric, *names, "time (s)"], rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def write_plots(study: optuna.Study, out: Path, metric: str) -> dict[str, str]:
    """PNG and HTML of each plot; returns the plots skipped, with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vmpl

    skipped = {}
    for name in PLOTS:
        kwargs = {} if name == "intermediate_values" else {"target_name": metric}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vmpl, f"plot_{name}")(study, **kwargs)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(fig)
                html = getattr(vis, f"plot_{name}")(study, **kwargs)
                html.write_html(out / f"{name}.html", include_plotlyjs="directory")
        except Exception as err:  # noqa: BLE001 - a plot Optuna cannot draw yet (too few trials) is skipped
            skipped[name] = f"{type(err).__name__}: {err}"
    return skipped


def best_trial_test_table(best: FrozenTrial, out: Path, metric: str, study: str) -> str:
    """Benchmark the best trial's checkpoint on the test sets and val scales of its config (cached per checkpoint)."""
    from lit_sr.checkpoint import load_method
    from lit_sr.data.sources import default_test_sets
    from lit_sr.evaluate import versus_bicubic, write_results

    ckpt, name = best.user_attrs.get("checkpoint"), f"trial-{best.number}"
    config = Path(best.user_attrs["run_dir"]) / "trial.yaml"
    if not ckpt or not Path(ckpt).is_file():
        return f"no test table: trial {best.number} left no checkpoint ({ckpt})"
    result = Path(best.user_attrs["run_dir"]) / "result.json"
    written = json.loads(result.read_text()) if result.is_file() else {}
    if (written.get("study"), written.get("trial"), written.get("value")) != (study, best.number, best.value):
        return (f"no test table: {result.parent} holds another trial now ({written.get('study')} trial "
                f"{written.get('trial')}, value {written.get('value')}, not {best.value}: the same study name under "
                "this --root with another storage?)")
    cached, written = out / "results.json", Path(ckpt).stat().st_mtime_ns  # a restarted study reuses the path
    if cached.is_file() and json.loads(cached.read_text())["meta"].get("checkpoint_written") == [ckpt, written]:
        return (out / "results.md").read_text().rsplit("\n\n", 1)[-1].strip()
    data = yaml.safe_load(config.read_text()).get("data") or {}  # the DataModule's defaults where it is silent
    sets = data["test_sets"] if data.get("test_sets") is not None else default_test_sets()
    if not sets:
        return "no test table: the trial's data.test_sets is empty and the data root has no Set5/Set14"
    method = load_method(ckpt)
    scales = [s for s in data.get("val_scales") or data.get("scales") or method.supported_scales
              if s in method.supported_scales]
    rows, table = versus_bicubic(method, name, sets, scales)
    write_results(out, rows[name], name, ckpt, method.hparams.ssim_variant, str(config), table,
                  meta={"selection": {"metric": metric, "value": best.value, "trial": best.number},
                        "checkpoint_written": [ckpt, written]})
    return table


def log_report_run(sweep: Sweep, out: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    """The study's own W&B run: the plots, the ranked trials, the best trial in its summary."""
    import wandb

    from lit_sr.loggers import init_run

    run = init_run("report", "sweep-report", out, group=sweep.study_name, tags=[sweep.spec.method],
                   config={"sweep_file": str(sweep.path), "preset": sweep.preset, "metric": sweep.study.metric})
    try:
        run.log({"trials": wandb.Table(columns=columns, data=rows),
                 **{f"plots/{png.stem}": wandb.Image(str(png)) for png in sorted(out.glob("*.png"))}})
        if rows:
            run.summary.update({f"best/{k}": v for k, v in zip(columns[1:-1], rows[0][1:-1])})
    finally:
        run.finish()
    return Path(run.dir).parent


def report(sweep: Sweep, top_k: int | None = None, test: bool = True) -> str:
    """Write the report files; returns the text ``lit-sr sweep`` prints."""
    url, metric = sweep.storage_url, sweep.study.metric
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise SweepError(f"no study storage at {url}: run `lit-sr sweep {sweep.path}` first, or pass the --root or "
                         "--storage URL the study ran with")
    try:
        study = optuna.load_study(study_name=sweep.study_name, storage=make_storage(url))
    except KeyError as err:
        where = url.split("@")[-1]  # no password in messages
        raise SweepError(f"no study {sweep.study_name!r} in {where}: run `lit-sr sweep {sweep.path}` first") from err
    out = sweep.study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    trials, best, k = study.get_trials(deepcopy=False), ranked(study), top_k or sweep.study.top_k
    columns, rows = trials_table(best, metric)
    table = markdown_table(columns, [[f"{v:.4f}" if i == 2 else _fmt(v) for i, v in enumerate(r)] for r in rows[:k]])
    (out / "top_k.md").write_text(f"# {study.study_name}: top {k} by {metric}\n\n{table}\n")
    (out / "trials.json").write_text(json.dumps(
        [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params, "user_attrs": t.user_attrs,
          "intermediate_values": t.intermediate_values} for t in trials], indent=2, default=str))
    lines = [f"study {study.study_name}: {describe(trials)}"]
    if not best:
        return "\n".join([*lines, "no COMPLETE trial yet"])
    b = best[0]
    lines += [f"best trial {b.number}: {metric} {b.value:.4f} (validation) "
              f"[{', '.join(f'{k}={_fmt(v)}' for k, v in b.params.items())}]",
              f"  checkpoint {b.user_attrs.get('checkpoint')}", f"  W&B run {b.user_attrs.get('wandb_run')}", "", table]
    if test:
        lines += ["", f"Test sets of the best trial (chosen on {metric} {b.value:.4f}, validation):", "",
                  best_trial_test_table(b, out / "test", metric, study.study_name), "",
                  "The test numbers were not used to choose this trial: it was chosen on validation only."]
    skipped = write_plots(study, out, metric)
    lines += ["", f"report and plots in {out}/, W&B run {log_report_run(sweep, out, columns, rows)}"]
    return "\n".join(lines + [f"  skipped plot {k}: {v}" for k, v in skipped.items()])
