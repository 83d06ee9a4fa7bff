"""A study's results: best trial, top-k table, plots (PNG and HTML) and a W&B summary run.

Written under ``<study dir>/report/``: ``top_k.md``, ``trials.json``, ``<plot>.png``
(``optuna.visualization.matplotlib``) and ``<plot>.html`` (plotly; its PNG export would need a browser)
for the optimization history, parameter importances (Optuna's default PED-ANOVA evaluator: no extra
dependency), parallel coordinates and intermediate values. A plot that cannot be drawn yet (e.g.
importances before two trials complete) is skipped with the reason.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def format_table(trials: list[FrozenTrial], metric: str) -> str:
    """Markdown table: rank, trial, metric, every param, duration."""
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    head = ["rank", "trial", metric, *names, "time (s)"]
    rows = [
        [
            str(i + 1),
            str(t.number),
            f"{t.value:.4f}",
            *(_fmt(t.params.get(n)) for n in names),
            f"{t.duration.total_seconds():.0f}" if t.duration else "",
        ]
        for i, t in enumerate(trials)
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _plots(study: optuna.Study, out: Path, metric: str) -> tuple[list[Path], dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vmpl

    files, skipped = [], {}
    complete = ranked(study)
    varying = [
        n
        for n in dict.fromkeys(k for t in complete for k in t.params)
        if len({json.dumps(t.params.get(n), default=str) for t in complete}) > 1
    ]
    for name in PLOTS:
        if not complete:
            skipped[name] = "no COMPLETE trial yet"
            continue
        if name == "param_importances" and (len(complete) < 2 or not varying):
            skipped[name] = "needs two COMPLETE trials that differ in a param"
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            skipped[name] = "no trial reported an intermediate value"
            continue
        kwargs = {"target_name": metric} if name != "intermediate_values" else {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vmpl, f"plot_{name}")(study, **kwargs)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(fig)
                getattr(vis, f"plot_{name}")(study, **kwargs).write_html(
                    out / f"{name}.html", include_plotlyjs="directory"
                )
            files += [out / f"{name}.png", out / f"{name}.html"]
        except Exception as err:  # noqa: BLE001 - a plot Optuna cannot draw yet must not lose the report
            skipped[name] = f"{type(err).__name__}: {err}"
    return files, skipped


def _trial_record(t: FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": t.params,
        "user_attrs": t.user_attrs,
        "intermediate_values": t.intermediate_values,
        "retry_of": t.system_attrs.get("failed_trial"),
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    metric: str = "val/psnr_y",
    top_k: int = 5,
    method: str | None = None,
    log_wandb: bool = True,
) -> dict[str, Any]:
    """Write the report files and (optionally) a W&B summary run; returns what was found and written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    best = ranked(study)
    table = format_table(best[:top_k], metric)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    (out / "top_k.md").write_text(f"# {study.study_name}: top {top_k} by {metric}\n\n{table}\n")
    (out / "trials.json").write_text(json.dumps([_trial_record(t) for t in trials], indent=2, default=str))
    files, skipped = _plots(study, out, metric)
    result: dict[str, Any] = {
        "study": study.study_name,
        "metric": metric,
        "states": states,
        "table": table,
        "out_dir": str(out),
        "files": [str(f) for f in files],
        "skipped": skipped,
        "wandb_run": None,
        "best": None
        if not best
        else {
            "number": best[0].number,
            "value": best[0].value,
            "params": best[0].params,
            "checkpoint": best[0].user_attrs.get("checkpoint"),
            "wandb_run": best[0].user_attrs.get("wandb_run"),
        },
    }
    if log_wandb:
        result["wandb_run"] = _log_wandb(study, out, result, trials, method)
    return result


def _log_wandb(
    study: optuna.Study, out: Path, result: dict[str, Any], trials: list[FrozenTrial], method: str | None
) -> str:
    """One W&B run per report (group = study, job_type sweep-summary): tables, plots, best in its summary."""
    import wandb

    from lit_sr.loggers import wandb_offline

    offline = wandb_offline()
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "lit_sr"),
        entity=os.environ.get("WANDB_ENTITY"),
        dir=str(out),
        group=study.study_name,
        name=f"{study.study_name}-summary",
        job_type="sweep-summary",
        tags=[t for t in (method, "sweep-summary") if t],
        mode="offline" if offline else "online",
        config={
            "study": study.study_name,
            "metric": result["metric"],
            "states": result["states"],
            "sweep": study.user_attrs.get("sweep", {}),
        },
    )
    try:
        names = list(dict.fromkeys(k for t in trials for k in t.params))
        columns = ["trial", "state", "value", *names, "wandb_run", "checkpoint", "reason"]
        data = [
            [
                t.number,
                t.state.name,
                t.value,
                *(_fmt(t.params.get(n)) for n in names),
                t.user_attrs.get("wandb_run"),
                t.user_attrs.get("checkpoint"),
                t.user_attrs.get("reason"),
            ]
            for t in trials
        ]
        log: dict[str, Any] = {"trials": wandb.Table(columns=columns, data=data)}
        for f in result["files"]:
            if f.endswith(".png"):
                log[f"plots/{Path(f).stem}"] = wandb.Image(f)
        run.log(log)
        best = result["best"]
        if best:
            run.summary.update(
                {
                    "best/value": best["value"],
                    "best/trial": best["number"],
                    **{f"best/params/{k}": v for k, v in best["params"].items()},
                }
            )
        return str(Path(run.dir).parent) if offline else run.path
    finally:
        run.finish()


def format_report(result: dict[str, Any]) -> str:
    """The text ``lit-sr sweep`` prints at the end."""
    lines = [f"study {result['study']}: " + ", ".join(f"{n} {k}" for k, n in result["states"].items())]
    best = result["best"]
    if best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        lines += [
            f"best trial {best['number']}: {result['metric']} {best['value']:.4f} ({params})",
            f"  checkpoint {best['checkpoint']}",
            f"  W&B run {best['wandb_run']}",
        ]
    else:
        lines.append("no COMPLETE trial yet")
    lines += [
        "",
        result["table"],
        "",
        f"report and plots in {result['out_dir']}/ (top_k.md, trials.json, *.png, *.html)",
    ]
    lines += [f"  skipped {name}: {why}" for name, why in result["skipped"].items()]
    if result["wandb_run"]:
        lines.append(f"W&B summary run: {result['wandb_run']}")
    return "\n".join(lines)
