"""The ``lit-sr`` command.

    lit-sr fit|validate|test --config experiments/vdsr/paper.yaml [--key value ...]   (LightningCLI)
    lit-sr train vdsr [--preset quick|paper] [LightningCLI overrides]   fit, then the benchmark table vs bicubic
    lit-sr benchmark bicubic|CKPT --data Set5 Set14 --scales 2 3 4 --out OUT
    lit-sr upscale CKPT photo.png folder/ [...] --scale 4 -o out/ [--tile 256 --self-ensemble --force]
    lit-sr export CKPT --onnx model.onnx [--scale 4]

Config layout (every method): ``model.class_path`` names the method's LightningModule;
``model.init_args.variant`` the registered network and ``model.init_args.net`` its overrides (e.g.
``model.init_args.net.depth``); ``model.init_args.stages`` the schedule (``...stages.0.clip.theta``);
``data.*`` the SRDataModule; ``trainer.*`` the Lightning Trainer; ``run_dir`` where the run writes
(default ``runs/<method>/<time>``: ``config.yaml``, ``checkpoints/``, ``wandb/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI

from lit_sr.callbacks import AtomicCheckpointIO, StageProgressBar
from lit_sr.data.datamodule import SRDataModule
from lit_sr.loggers import SRWandbLogger
from lit_sr.methods.base import SRMethod

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
REPO = Path(__file__).resolve().parents[1]


class SRCLI(LightningCLI):
    """LightningCLI with lit_sr's defaults: a run directory, W&B logging, best/last checkpoints, stage bar."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.run_dir: Path | None = None
        super().__init__(
            SRMethod,
            SRDataModule,
            subclass_mode_model=True,
            auto_configure_optimizers=False,  # the stage engine owns optimizers
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir", type=str | None, default=None, help="where the run writes everything"
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        method = cfg.model.class_path.rsplit(".", 1)[-1].lower()
        if cfg.get("ckpt_path") == "last" and not cfg.run_dir:
            cfg.run_dir = str(latest_run(method))  # resume the newest run of this method in its own folder
        run_dir = cfg.run_dir or str(Path("runs") / method / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
        cfg.run_dir = run_dir
        cfg.trainer.default_root_dir = run_dir
        self.run_dir = Path(run_dir)
        self._tags = [method, str(cfg.model.init_args.get("variant") or method)]

    def before_fit(self) -> None:
        if self.trainer.logger is not None:
            cfg = self.config[self.subcommand]
            self.trainer.logger.log_hyperparams(
                {"config": self._parser(self.subcommand).dump(cfg, format="yaml", skip_none=False)}
            )

    def _instantiate_trainer(self, config, callbacks):
        config = dict(config)
        if config.get("logger") in (None, True):
            config["logger"] = SRWandbLogger(
                save_dir=str(self.run_dir), name=self.run_dir.name, tags=self._tags
            )
        if config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks + list(config.get("callbacks") or [])
        ):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=self.run_dir / "checkpoints",
                    filename="best",
                    monitor="val/psnr_y",
                    mode="max",
                    save_last=True,
                )
            )
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks + list(config.get("callbacks") or [])
        ):
            callbacks.append(StageProgressBar())
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def latest_run(method: str, root: str | Path = "runs") -> Path:
    """The newest ``runs/<method>/<time>`` folder holding ``checkpoints/last.ckpt`` (for ``--ckpt_path last``)."""
    candidates = sorted(Path(root).glob(f"{method}/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit(
            f"--ckpt_path last: no {root}/{method}/*/checkpoints/last.ckpt to resume; pass --run_dir of the run "
            "or --ckpt_path with a checkpoint file"
        )
    return candidates[-1].parent.parent


def experiment_config(model: str, preset: str) -> Path:
    """``experiments/<model>/<preset>.yaml`` in the current folder or the repository."""
    for root in (Path.cwd(), REPO):
        path = root / "experiments" / model / f"{preset}.yaml"
        if path.is_file():
            return path
    available = sorted(p.parent.name + "/" + p.stem for p in (REPO / "experiments").glob("*/*.yaml"))
    raise SystemExit(
        f"no experiment config experiments/{model}/{preset}.yaml; available: {', '.join(available)}"
    )


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    import wandb

    from lit_sr.evaluate import format_table, run_benchmark, write_results
    from lit_sr.methods.base import load_method
    from lit_sr.methods.bicubic import Bicubic

    config = experiment_config(args.model, args.preset)
    cli = SRCLI(args=["fit", "--config", str(config), *overrides])
    trainer, dm = cli.trainer, cli.datamodule
    if not trainer.is_global_zero:
        return 0
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    datasets = list(dict.fromkeys(name for name, _ in dm.val_keys))
    scales = sorted({s for _, s in dm.val_keys})
    method = load_method(ckpt)
    rows = {
        "bicubic": run_benchmark(Bicubic(ssim_variant=method.hparams.ssim_variant), datasets, scales),
        args.model: run_benchmark(method, datasets, scales),
    }
    table = format_table(rows, scales)
    out = cli.run_dir / "benchmark"
    write_results(out, rows[args.model], args.model, ckpt, method.hparams.ssim_variant, str(config), table)
    print(
        f"\n{args.model} ({args.preset} preset), checkpoint {ckpt}:\n\n{table}\n\nwritten to {out}/results.md"
    )
    logger = trainer.logger
    if isinstance(logger, SRWandbLogger):
        columns = ["dataset", "scale", "method", "psnr_y", "ssim_y"]
        data = [
            [d, s, name, res[d][f"x{s}"]["psnr_y"], res[d][f"x{s}"]["ssim_y"]]
            for name, res in rows.items()
            for d in datasets
            for s in scales
        ]
        logger.experiment.log({"benchmark": wandb.Table(columns=columns, data=data)})
        wandb.finish()
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lit_sr.evaluate import format_table, resolve_method, run_benchmark, write_results

    method, ckpt = resolve_method(args.method, args.ssim)
    results = run_benchmark(method, args.data, args.scales)
    name = "bicubic" if ckpt is None else Path(ckpt).stem
    table = format_table({name: results}, args.scales)
    write_results(args.out, results, args.method, ckpt, args.ssim, table=table)
    print(f"{table}\n\nwritten to {args.out}/results.md and results.json")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from lit_sr.evaluate import resolve_method
    from lit_sr.upscale import upscale_files

    method, _ = resolve_method(args.checkpoint)
    method.to(args.device)
    try:
        written = upscale_files(
            method, args.images, args.out, args.scale, args.tile, args.tile_overlap, args.self_ensemble, args.force
        )
    except (FileExistsError, ValueError) as err:  # ImageError is a ValueError
        raise SystemExit(f"lit-sr upscale: {err}") from err
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lit_sr.evaluate import resolve_method
    from lit_sr.export import export_onnx

    method, _ = resolve_method(args.checkpoint)
    scale = args.scale or max(method.supported_scales)
    path = export_onnx(method, scale, args.onnx)
    print(f"wrote {path} (x{scale}, input 'lr' float32 (N, C, h, w) in [0, 1], output 'sr')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-sr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fit a method's preset, then print its benchmark table against bicubic")
    p.add_argument("model", help="experiments/<model>/ folder, e.g. vdsr")
    p.add_argument("--preset", default="quick", help="quick (CPU, minutes) or paper")
    p = sub.add_parser("benchmark", help="paper-style PSNR/SSIM table for bicubic or a checkpoint")
    p.add_argument("method", help="'bicubic' or a checkpoint path")
    p.add_argument(
        "--data", nargs="+", default=["Set5", "Set14"], help="set names under LIT_SR_DATA or folders"
    )
    p.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--ssim", default="ssim_index", choices=["ssim_index", "matlab"])
    p = sub.add_parser("upscale", help="super-resolve image files and folders with a checkpoint")
    p.add_argument("checkpoint", help="a .ckpt written by lit-sr fit, or 'bicubic'")
    p.add_argument("images", nargs="+", help="image files and/or folders (walked recursively)")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("-o", "--out", default="outputs", help="output folder (<stem>_x<S>.png)")
    p.add_argument("--tile", type=int, default=256, help="tile size in LR pixels (0: whole image at once)")
    p.add_argument("--tile-overlap", type=int, default=16, help="LR pixels of context on each side of a tile")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations (8x slower)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p = sub.add_parser("export", help="write a checkpoint as ONNX (one scale, dynamic height and width)")
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--scale", type=int, default=None, help="default: the largest supported scale")
    return parser


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        import wandb

        try:
            SRCLI(args=None if from_command_line else argv)  # None: LightningCLI reads sys.argv itself
        finally:
            wandb.finish()  # flush the run file now rather than in an exit hook
        return 0
    if argv and argv[0] == "sweep":
        from lit_sr.sweep.cli import main as sweep_main

        return sweep_main(argv[1:])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return cmd_train(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {"benchmark": cmd_benchmark, "upscale": cmd_upscale, "export": cmd_export}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
