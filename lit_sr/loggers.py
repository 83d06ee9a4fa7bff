"""Weights & Biases as the default logger, offline unless credentials exist, never a prompt."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_has_credentials() -> bool:
    """True when an API key is in ``WANDB_API_KEY`` or in ~/.netrc for api.wandb.ai (as ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline(offline: bool | None = None) -> bool:
    """Offline when asked, when ``WANDB_MODE`` says offline/dryrun/disabled, or when there are no credentials."""
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not wandb_has_credentials()


def wandb_run_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run under ``save_dir`` (``wandb/[offline-]run-<time>-<id>/run-<id>.wandb``), or None."""
    files = Path(save_dir, "wandb").glob("*run-*/run-*.wandb")
    newest = max(files, key=lambda f: f.parent.name.split("run-", 1)[1], default=None)  # by the start time
    return newest.stem.removeprefix("run-") if newest else None


def init_run(name: str, job_type: str, save_dir: str | Path, **kwargs: Any) -> Any:
    """A W&B run of its own (a sweep report, a comparison), in the project, entity and mode of the trainer's logger."""
    import wandb

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "lit_sr"), entity=os.environ.get("WANDB_ENTITY"),
                      name=name, job_type=job_type, dir=str(save_dir), reinit="create_new",
                      mode="offline" if wandb_offline() else "online", **kwargs)


class SRWandbLogger(WandbLogger):
    """``WandbLogger`` writing under the run directory; project/entity/group from arguments or WANDB_* env."""

    def __init__(
        self,
        save_dir: str = "runs",
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        offline: bool | None = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        offline = wandb_offline(offline)
        if offline:  # Lightning says it through WANDB_MODE, which W&B ignores once its settings exist in the process
            kwargs.setdefault("mode", "offline")
        super().__init__(
            save_dir=save_dir,
            project=project or os.environ.get("WANDB_PROJECT", "lit_sr"),
            entity=entity or os.environ.get("WANDB_ENTITY"),
            group=group or os.environ.get("WANDB_RUN_GROUP"),
            name=name,
            tags=tags,
            offline=offline,
            log_model=log_model,
            **kwargs,
        )
