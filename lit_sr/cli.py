"""The ``lit-sr`` command: one parser listing every subcommand.

    lit-sr fit|validate|test --config experiments/vdsr/paper.yaml [--key value ...]   (LightningCLI)
    lit-sr train vdsr [--preset quick|paper] [LightningCLI overrides]   fit, select on val, then the test table
    lit-sr benchmark bicubic|CKPT --data Set5 Set14 --scales 2 3 4 --out OUT
    lit-sr compare [RUN_DIR ...]                                        one table of trained runs
    lit-sr sweep sweeps/cmsc.yaml [...]                                 Optuna study (lit-sr sweep --help)
    lit-sr upscale CKPT photo.png folder/ [...] --scale 4 -o out/ [--tile 256 --self-ensemble --force]
    lit-sr export CKPT --onnx model.onnx [--scale 4]                   ONNX, dynamic height and width

Config layout (every method): ``model.class_path`` names the method's LightningModule;
``model.init_args.variant`` the registered network and ``model.init_args.net`` its overrides (e.g.
``model.init_args.net.depth``); ``model.init_args.stages`` the schedule (``...stages.0.clip.theta``);
``data.*`` the SRDataModule; ``trainer.*`` the Lightning Trainer; ``run_dir`` where the run writes
(default ``runs/<method>/<time>``: ``config.yaml``, ``checkpoints/``, ``wandb/``, ``benchmark/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from lit_sr.callbacks import AtomicCheckpointIO, ImagePanels, RunCheckpoint, StageProgressBar
from lit_sr.checkpoint import check_ckpt_path
from lit_sr.cluster import (
    SignalCheckpoint,
    StepCheckpoint,
    add_trainer_arguments,
    plugin_class,
    precision_for_device,
    train_overrides,
    under_slurm,
    with_cluster_environment,
)
from lit_sr.data.datamodule import SRDataModule
from lit_sr.errors import DEBUG_VAR, ConfigError, UserError, run_reporting_errors, take_debug_flag
from lit_sr.loggers import SRWandbLogger, wandb_run_id
from lit_sr.methods import SRMethod, registered_methods
from lit_sr.paths import writable_folder
from lit_sr.presets import preset_path
from lit_sr.typed import class_path, config_entry

LIGHTNING_COMMANDS = ("fit", "validate", "test")  # not predict: SRDataModule has no predict set; see upscale
# Lightning's notes that do not apply here: lit-sr hands LightningCLI its own command line as ``args``; a resume
# writes into its run's checkpoint folder; the deprecation is inside Lightning's own code.
for _note in ("LightningCLI's args parameter is intended", "Checkpoint directory .* exists and is not empty",
              r"`isinstance\(treespec, LeafSpec\)` is deprecated"):
    warnings.filterwarnings("ignore", message=_note)
RUN_DIR_VAR = "LIT_SR_RUN_DIR"  # the default run folder rank 0 chose, for the ranks Lightning starts


def _method_name(path: str) -> str:
    by_path = {class_path(c): n for n, c in registered_methods().items()}
    return by_path.get(path, path.rsplit(".", 1)[-1].lower())


def _set_init_args(entry: object, cls: type, **init_args) -> None:
    """Set ``init_args`` of a config ``class_path`` entry naming ``cls`` itself (other classes are left alone)."""
    if isinstance(entry, Namespace) and entry.get("class_path") == class_path(cls):
        if entry.get("init_args") is None:
            entry.init_args = Namespace()
        for key, value in init_args.items():
            entry.init_args[key] = value


class RunConfig(SaveConfigCallback):
    """The run's resolved config without ``run_dir`` and ``ckpt_path``: reused, it trains a new run from scratch.

    A fit writes it once its checkpoint is restored (``on_fit_start``): a resume whose config does not fit the
    checkpoint fails without rewriting the run's config.yaml.
    """

    def __init__(self, parser, config: Namespace, **kwargs) -> None:
        config = config.clone()
        config.run_dir = config.ckpt_path = None
        super().__init__(parser, config, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")


class SRCLI(LightningCLI):
    """LightningCLI with lit_sr's defaults: a run directory, W&B logging, best/last checkpoints, stage bar."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.run_dir: Path | None = None
        try:
            super().__init__(
                SRMethod,
                SRDataModule,
                subclass_mode_model=True,
                auto_configure_optimizers=False,  # the stage engine owns optimizers
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False},  # a bad key is one `lit-sr: error:` line, not the usage
                args=args,
                run=run,
            )
        except BaseException:
            if self.run_dir is not None and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # a run stopped before it wrote anything leaves no empty folder
            raise
        finally:
            os.environ.pop(RUN_DIR_VAR, None)  # the next run in this process names its own folder

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None, help="where the run writes everything")

    def before_instantiate_classes(self) -> None:
        """Fill in what every run gets unless its config says otherwise: run folder, logger, callbacks."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        method = _method_name(cfg.model.class_path)
        if cfg.get("ckpt_path") == "last" and not cfg.run_dir:
            cfg.run_dir = str(latest_run(method))  # resume the newest run of this method in its own folder
        elif cfg.get("ckpt_path") == "last":
            check_resumable(Path(cfg.run_dir), method)  # before the folder is made: a typo must not train anew
        cfg.run_dir = cfg.run_dir or default_run_dir(method)
        self.run_dir = Path(cfg.run_dir)
        held = self.run_dir / "checkpoints" / "last.ckpt"
        if self.subcommand == "fit" and not cfg.get("ckpt_path") and held.is_file():  # would overwrite that run
            raise ConfigError(f"--run_dir {self.run_dir} already holds a run ({held}); resume it with --ckpt_path "
                              "last, or choose another --run_dir (or none: runs/<method>/<time>) for a new run")
        # config.yaml is the fit's; validate and test write config-<subcommand>.yaml beside it
        self.save_config_kwargs["config_filename"] = "config.yaml" if self.subcommand in (None, "fit") else (
            f"config-{self.subcommand}.yaml")
        writable_folder(self.run_dir, "--run_dir", "pass --run_dir with a folder you can write, or run from a "
                        "writable working directory")  # one clear error, not a logger's traceback
        trainer = cfg.trainer
        trainer.default_root_dir = cfg.run_dir
        if trainer.get("max_epochs") is None and trainer.get("max_steps") in (None, -1):
            trainer.max_epochs = -1  # the stages set it (SRMethod.on_train_start), not Lightning's default of 1000
        if (precision := precision_for_device(trainer.precision, trainer.accelerator)) != trainer.precision:
            rank_zero_warn(f"trainer.precision {trainer.precision}: this CPU has no bf16 units (AVX512-BF16 or AMX), "
                           f"where bf16 trains about 10x slower than fp32; training in {precision} (config.yaml says "
                           "so)")
            trainer.precision = precision
        tags = [method, str(cfg.model.init_args.get("variant") or method)]
        if trainer.logger in (None, True):
            trainer.logger = config_entry(SRWandbLogger, save_dir=cfg.run_dir, name=self.run_dir.name, tags=tags)
        # lit_sr's own logger and checkpoints write in run_dir even when the config names them with other folders
        # (a run's saved config.yaml reused with another --run_dir must not write into that run).
        # A resumed fit continues its folder's W&B run (WandbLogger inits with resume="allow"); any other run is new.
        version = wandb_run_id(self.run_dir) if self.subcommand == "fit" and cfg.get("ckpt_path") else None
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for entry in loggers:
            _set_init_args(entry, SRWandbLogger, save_dir=cfg.run_dir, name=self.run_dir.name, version=version)
        callbacks = list(trainer.callbacks or [])
        for entry in callbacks:
            _set_init_args(entry, RunCheckpoint, dirpath=str(self.run_dir / "checkpoints"))
        names = {c.class_path.rsplit(".", 1)[-1] for c in callbacks if isinstance(c, Namespace)}
        if trainer.enable_checkpointing is not False and not names & {"ModelCheckpoint", "RunCheckpoint"}:
            # The folder is set now: Lightning resolves --ckpt_path last before any callback's setup.
            callbacks.append(config_entry(RunCheckpoint, dirpath=str(self.run_dir / "checkpoints")))
        if trainer.enable_progress_bar is not False and not any("ProgressBar" in n for n in names):
            callbacks.append(config_entry(StageProgressBar))
        if "ImagePanels" not in names:
            callbacks.append(config_entry(ImagePanels))
        if trainer.enable_checkpointing is not False:  # exact resume: step checkpoints, a checkpoint on SIGTERM
            callbacks += [config_entry(c) for c in (StepCheckpoint, SignalCheckpoint) if c.__name__ not in names]
        trainer.callbacks = callbacks
        plugins = with_cluster_environment(trainer.plugins)  # LIT_SR_IGNORE_SLURM: own DDP ranks
        if not any(issubclass(c, CheckpointIO) for c in map(plugin_class, plugins) if c is not None):
            plugins.append(config_entry(AtomicCheckpointIO))  # a class_path, not an instance: config.yaml loads again
        trainer.plugins = plugins

    def parse_arguments(self, parser, args) -> None:
        """Parse, then read ``--ckpt_path`` safely: LightningCLI next unpickles its hyperparameters."""
        super().parse_arguments(parser, args)
        cfg = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        check_ckpt_path(cfg.get("ckpt_path"), cfg.model.class_path)

    def before_fit(self) -> None:
        if self.trainer.logger is not None:
            cfg = self.config[self.subcommand]
            self.trainer.logger.log_hyperparams(
                {"config": self._parser(self.subcommand).dump(cfg, format="yaml", skip_none=False)}
            )


def default_run_dir(method: str) -> str:
    """``runs/<method>/<time>``, the same on every rank: the ranks Lightning starts inherit rank 0's choice."""
    if os.environ.get(RUN_DIR_VAR):
        return os.environ[RUN_DIR_VAR]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (under_slurm() and int(os.environ.get("SLURM_NTASKS", "1")) > 1):
        raise ConfigError("this process is one rank of a multi-process launch (torchrun, srun): pass --run_dir, "
                          "the same on every rank (each rank would name its own runs/<method>/<time>)")
    base = Path("runs") / method / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = base, 1
    while run_dir.exists():  # another run started in the same second
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    os.environ[RUN_DIR_VAR] = str(run_dir)
    return str(run_dir)


def latest_run(method: str, root: str | Path = "runs") -> Path:
    """The newest ``runs/<method>/<time>`` folder holding ``checkpoints/last.ckpt`` (for ``--ckpt_path last``)."""
    candidates = sorted(Path(root).glob(f"{method}/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit(
            f"--ckpt_path last: no {root}/{method}/*/checkpoints/last.ckpt to resume; pass --run_dir of the run "
            "or --ckpt_path with a checkpoint file"
        )
    return candidates[-1].parent.parent


def check_resumable(run_dir: Path, method: str) -> None:
    """``--ckpt_path last --run_dir RUN``: RUN must hold ``checkpoints/last.ckpt`` (Lightning would only warn, then
    train from scratch)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(
            f"--ckpt_path last: no {last} to resume; pass --run_dir of a run that has it (runs/{method}/<time>), "
            f"omit --run_dir to resume the newest run of {method}, or pass --ckpt_path with a checkpoint file"
        )


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _leave_process_group() -> None:
    """End this rank's part of the DDP process group, if there is one (after the last collective of the run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    """Fit a preset (choosing the checkpoint on val), test that checkpoint, print and write the test table."""
    import wandb

    from lit_sr.evaluate import versus_bicubic, write_results

    config = preset_path(args.model, args.preset)
    wall, cpu = time.monotonic(), _cpu_seconds()
    cli = SRCLI(args=["fit", "--config", str(config), *overrides])
    trainer, dm, method = cli.trainer, cli.datamodule, cli.model
    timing = {"train_wall_s": round(time.monotonic() - wall, 1), "train_cpu_s": round(_cpu_seconds() - cpu, 1)}
    callback = trainer.checkpoint_callback
    ckpt = (callback.best_model_path or callback.last_model_path) if callback is not None else ""
    if not ckpt:  # nothing to test (Lightning: "found no path for the best weights: ''"); every rank stops here
        why = (
            f"no training step ran (trainer.max_epochs {trainer.max_epochs}, trainer.max_steps {trainer.max_steps})"
            if trainer.global_step == 0
            else "checkpointing is off (trainer.enable_checkpointing: false or no ModelCheckpoint)"
        )
        fix = (
            "give it a budget: trainer.max_epochs / trainer.max_steps above 0, or drop them to train the stages' "
            "epochs/steps"
            if trainer.global_step == 0
            else "leave trainer.enable_checkpointing on (lit-sr train tests the checkpoint chosen on validation)"
        )
        raise ConfigError(f"lit-sr train: no checkpoint was written because {why}; {fix}")
    val_score = None if callback.best_model_score is None else float(callback.best_model_score)
    if dm.test_sets:
        trainer.test(method, datamodule=dm, ckpt_path=ckpt, verbose=False)  # every rank: results gathered over all
    # The rest is rank 0's work in one process (bicubic rows in a fresh single-device Trainer). With the process
    # group still up its metrics would sync with ranks that have returned, and fail when they exit.
    _leave_process_group()
    if not trainer.is_global_zero:
        return 0
    scales = sorted({s for s in dm.val_scales})
    rows, table = {args.model: {}}, "(no test sets: data.test_sets is empty)"
    if dm.test_sets:
        rows, table = versus_bicubic(method, args.model, dm.test_sets, scales, method.last_results)
    selection = {"metric": callback.monitor, "value": val_score, "val_sets": dm.val_sets, "checkpoint": ckpt}
    out = cli.run_dir / "benchmark"
    meta = {
        "variant": method.hparams.variant,
        "net_params": sum(p.numel() for p in method.net.parameters()) if method.net is not None else 0,
        "preset": args.preset,
        "selection": selection,
        "data": dm.summary(),
        "selection_on_test": dm.selection_on_test,
        **timing,
    }
    run_config = str((cli.run_dir / "config.yaml").resolve())  # what ran: the preset with every override
    write_results(out, rows[args.model], args.model, ckpt, method.hparams.ssim_variant, run_config, table, meta)
    print(
        f"\n{args.model} ({args.preset} preset), checkpoint {ckpt}\n"
        + (
            f"chosen on validation: {callback.monitor} = {val_score:.3f} over {', '.join(dm.val_sets)} "
            if val_score is not None
            else "no validation ran (the last checkpoint is reported) "
        )
        + f"(training data: {', '.join(dm.train_names)}); the test sets below were not used to choose it.\n"
        f"training: {timing['train_wall_s'] / 60:.1f} min wall, {timing['train_cpu_s'] / 60:.1f} min CPU\n\n"
        f"{table}\n\nwritten to {out}/results.md"
    )
    logger = trainer.logger
    if isinstance(logger, SRWandbLogger) and dm.test_sets:
        columns = ["dataset", "scale", "method", "psnr_y", "ssim_y"]
        data = [
            [d, s, name, res[d][f"x{s}"]["psnr_y"], res[d][f"x{s}"]["ssim_y"]]
            for name, res in rows.items()
            for d in dm.test_sets
            for s in scales
        ]
        logger.experiment.log({"test_table": wandb.Table(columns=columns, data=data)})
    return 0


def checkpoint_roles(ckpt: str, sets: list[str]) -> dict:
    """What the checkpoint's run trained and chose on, for a benchmark's ``meta``; warns when a benchmarked set
    holds images the checkpoint was chosen on (its validation images, or copies of them) or copies of its training
    images. The image files come from the checkpoint (``SRDataModule.state_dict``), or, in older checkpoints, from
    its DataModule's arguments resolved here. Its run compared its training images with its val and test sets; any
    other image benchmarked is compared here."""
    from lit_sr.checkpoint import read_checkpoint
    from lit_sr.data.datamodule import SRDataModule
    from lit_sr.data.images import ImageError
    from lit_sr.data.overlap import copies_among
    from lit_sr.data.sources import default_test_sets, resolve_images

    state = read_checkpoint(ckpt)
    data = state.get("datamodule_hyper_parameters") or {}
    files = (state.get(SRDataModule.__qualname__) or {}).get("images")
    if files is None:  # before the images were recorded: the names, resolved here (a set missing here has none)

        def named(sources: list[str] | None, strict: bool = False) -> dict[str, list[str]]:
            out = {}
            for source in sources or []:
                try:
                    name, paths = resolve_images(source)
                except ImageError:
                    if strict:
                        raise
                    name, paths = Path(source).name, []
                out[name] = [str(p.resolve()) for p in paths]
            return out

        tested = data.get("test_sets") if data.get("test_sets") is not None else default_test_sets()
        files = {"val": named(data.get("val_sets")), "test": named(tested)}
        try:
            files["train"] = [p for ps in named(data.get("train_sources"), strict=True).values() for p in ps]
        except ImageError as err:
            files["train"] = err
    chosen = {p: name for name, paths in files["val"].items() for p in paths}
    compared = {*chosen, *(p for paths in files["test"].values() for p in paths)}
    evaluated = {name: [str(p.resolve()) for p in paths] for name, paths in map(resolve_images, sets)}
    # by file, and by name: the run's own sets moved to another data root keep their names
    reused = {name for name, paths in evaluated.items() if chosen.keys() & set(paths) or name in files["val"]}
    new = [name for name, paths in evaluated.items()
           if not set(paths) <= compared and name not in {*files["val"], *files["test"]}]  # fmt: skip
    copies, unchecked, train = [], [], files["train"]
    if new:
        try:
            if isinstance(train, ImageError):
                raise train
            evaluated_new = [Path(p) for n in new for p in evaluated[n] if p not in chosen]  # not a copy of itself
            copies = copies_among([Path(p) for p in [*train, *chosen]], evaluated_new)
        except ImageError as err:  # e.g. trained on another machine's folders
            unchecked = new
            warnings.warn(f"{ckpt}: its training images cannot be compared with {new} here ({err}): a copy of one "
                          "of them in training would inflate these rows", stacklevel=2)
    for source, image, corr in copies:
        role = f"a validation image ({chosen[str(source)]}) {ckpt} was chosen on" if str(source) in chosen else (
            f"a training image of {ckpt}")
        warnings.warn(f"{image} is a copy of {source} (correlation {corr:.3f}), {role}: its rows are not test numbers",
                      stacklevel=2)
        reused |= {n for n in new if str(source) in chosen and str(image) in evaluated[n]}
    if reused:
        warnings.warn(f"{ckpt} was chosen on images of {sorted(reused)} (its validation sets: {sorted(files['val'])}): "
                      "these rows are not test numbers", stacklevel=2)
    return {"train_sources": data.get("train_sources"), "val_sets": data.get("val_sets"),
            "selection_on_test": bool(reused), "checked_for_overlap": [n for n in new if n not in unchecked],
            "unchecked_for_overlap": unchecked,
            "training_copies": [[str(t), str(e), round(c, 4)] for t, e, c in copies if str(t) not in chosen],
            "selection_copies": [[str(t), str(e), round(c, 4)] for t, e, c in copies if str(t) in chosen]}


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lit_sr.data.sources import resolve_images
    from lit_sr.evaluate import format_table, resolve_method, run_benchmark, write_results

    method, ckpt = resolve_method(args.method, args.ssim)
    writable_folder(args.out, "--out")  # before the evaluation, not after it
    written = Path(args.out) / "results.json"
    try:
        previous = json.loads(written.read_text()).get("meta") or {}
    except (OSError, ValueError, AttributeError):  # none or unreadable: nothing a run wrote is lost
        previous = {}
    if "train_wall_s" in previous and not args.force:
        raise ConfigError(f"--out {args.out} holds the test table its training run wrote ({written}: with its "
                          "selection, data and timing); pass --force to replace it, or choose another --out")
    if len(set(args.data)) < len(args.data):
        raise ConfigError(f"--data {' '.join(args.data)} names a set twice; give each once")
    names = [resolve_images(source)[0] for source in args.data]  # a set's name is its folder's
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"--data {' '.join(args.data)} holds two sets named {twice[0]!r} (a set is named after its "
                          "folder): rename one folder")
    scales = args.scales or method.supported_scales
    meta, config = {}, None
    if ckpt is not None:
        meta, config = checkpoint_roles(ckpt, args.data), Path(ckpt).resolve().parent.parent / "config.yaml"
    results = run_benchmark(method, args.data, scales)
    table = format_table({method.name: results}, scales)
    write_results(args.out, results, method.name, ckpt, method.hparams.ssim_variant,
                  str(config) if config is not None and config.is_file() else None, table=table, meta=meta)
    print(f"{table}\n\nwritten to {args.out}/results.md and results.json")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lit_sr.compare import compare

    print(compare(args.runs, args.out))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from lit_sr.evaluate import resolve_method
    from lit_sr.upscale import upscale_files

    method, _ = resolve_method(args.checkpoint)
    written = upscale_files(method, args.images, args.out, args.scale, args.tile, args.tile_overlap,
                            args.self_ensemble, args.force, device=args.device)
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lit_sr.evaluate import resolve_method
    from lit_sr.export import export_onnx

    method, _ = resolve_method(args.checkpoint)
    writable_folder(Path(args.onnx).parent, "--onnx", "choose a file in a folder you can write")  # before the export
    scale = args.scale or max(method.supported_scales)
    path = export_onnx(method, scale, args.onnx)
    print(f"wrote {path} (x{scale}, input 'lr' float32 (N, C, h, w) in [0, 1], output 'sr')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-sr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--debug anywhere on the command line shows the traceback of an error instead of one line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        p = sub.add_parser(name, help=f"LightningCLI {name} (lit-sr {name} --help)", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("train", help="fit a method's preset, select on val, print its test table against bicubic")
    p.add_argument("model", help="a registered method, e.g. vdsr (experiments/<model>/)")
    p.add_argument("--preset", default="quick", help="quick (CPU, minutes) or paper")
    add_trainer_arguments(p)
    p = sub.add_parser("benchmark", help="paper-style PSNR/SSIM table for bicubic or a checkpoint")
    p.add_argument("method", help="'bicubic' or a checkpoint path")
    p.add_argument("--data", nargs="+", default=["Set5", "Set14"], help="set names under LIT_SR_DATA or folders")
    p.add_argument("--scales", nargs="+", type=int, default=None,
                   help="default: the scales the method supports (bicubic: 2 3 4 8)")
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--force", action="store_true", help="replace a training run's own results.json in --out")
    p.add_argument("--ssim", default=None, choices=["ssim_index", "matlab"],
                   help="SSIM variant (default: the checkpoint's own; ssim_index for bicubic)")
    p = sub.add_parser("compare", help="one table of trained runs (their benchmark/results.json)")
    p.add_argument("runs", nargs="*", help="run folders (default: every runs/<method>/<time> with results)")
    p.add_argument("--out", default="runs/compare")
    p = sub.add_parser("sweep", help="Optuna study over a method's knobs (lit-sr sweep --help)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("upscale", help="super-resolve image files and folders with a checkpoint")
    p.add_argument("checkpoint", help="a .ckpt written by lit-sr fit, or 'bicubic'")
    p.add_argument("images", nargs="+", help="image files and/or folders (walked recursively)")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("-o", "--out", default="outputs", help="output folder (<stem>_x<S>.png)")
    p.add_argument("--tile", type=int, default=256, help="tile size in LR pixels (0: whole image at once)")
    p.add_argument(
        "--tile-overlap", type=int, default=None, help="LR pixels of context per tile side (default: receptive field)"
    )
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations (8x slower)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p = sub.add_parser("export", help="write a checkpoint as ONNX (one scale, dynamic height and width)")
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--scale", type=int, default=None, help="default: the largest supported scale")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``lit-sr``: a user mistake prints one line ``lit-sr: error: ...`` and returns 2 (``--debug``: traceback)."""
    argv = take_debug_flag(sys.argv[1:] if argv is None else argv)
    return run_reporting_errors(_main, argv, argv=argv, debug=os.environ.get(DEBUG_VAR) == "1")


def _main(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        import wandb

        try:
            SRCLI(args=argv)
        finally:
            wandb.finish()  # flush the run file now rather than in an exit hook
        return 0
    if argv and argv[0] == "predict":
        raise UserError(
            "lit-sr predict: not a lit-sr command (the data module has no prediction set); to super-resolve images "
            "with a checkpoint use `lit-sr upscale CKPT IMAGE_OR_FOLDER ... --scale S -o OUT` (lit-sr upscale --help)"
        )
    if argv and argv[0] == "sweep":
        from lit_sr.sweep.cli import main as sweep_main

        return sweep_main(argv[1:])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        import wandb

        try:
            return cmd_train(args, [*train_overrides(args), *rest])
        finally:
            wandb.finish()
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    commands = {"benchmark": cmd_benchmark, "compare": cmd_compare, "upscale": cmd_upscale, "export": cmd_export}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
