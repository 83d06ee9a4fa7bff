"""Reading offline W&B runs back (tests/wandb_offline.py) from real runs and hand-framed files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2 as pb
from wandb_offline import find_runs, read_finished, read_run

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

BIG = "0123456789" * 7_000  # 70 kB: a record spread over three 32 KiB blocks (first/middle/last chunks)


def test_reads_back_a_real_offline_run(tmp_path):
    run = wandb.init(
        mode="offline",
        dir=tmp_path,
        project="t",
        group="g",
        name="n",
        tags=["a"],
        config={"lr": 0.1, "nested": {"x": 1}},
    )
    try:
        for step in range(4):
            run.log(
                {"val/Set5/x2/psnr_y": 30.0 + step, "train/loss": 1.0 / (step + 1), "d": {"e": step}},
                step=step,
            )
        run.log({"blob": BIG}, step=4)
        run.config.update({"late": "z"})
        run.summary["best"] = 3.0
        run_id = run.id
    finally:
        wandb.finish()

    r = read_finished(tmp_path)  # wandb-core may still be writing the file's last records after finish()
    assert r.finished
    paths = find_runs(tmp_path)
    assert len(paths) == 1
    assert paths[0].name == f"run-{run_id}.wandb" and paths[0].parent.name.startswith("offline-run-")
    assert (r.run_id, r.name, r.group, r.project, r.tags) == (run_id, "n", "g", "t", ["a"])
    assert r.config == {"lr": 0.1, "nested": {"x": 1}, "late": "z"}
    assert r.series("val/Set5/x2/psnr_y") == [30.0, 31.0, 32.0, 33.0]
    assert r.series("train/loss") == [1.0, 0.5, 1 / 3, 0.25]
    assert r.series("d.e") == [0, 1, 2, 3]
    assert r.series("_step") == [0, 1, 2, 3, 4]
    assert r.series("blob") == [BIG]
    assert r.summary["best"] == 3.0
    assert r.summary["val/Set5/x2/psnr_y"] == 33.0
    assert not any(k.startswith("_wandb") for k in r.summary)
    # A folder reads its newest run.
    assert read_run(tmp_path).history == r.history
    with pytest.raises(
        KeyError, match=r"'val/Set5/x4/psnr_y' was never logged .* logged keys: \[.*'train/loss'"
    ):
        r.series("val/Set5/x4/psnr_y")


def test_reads_train_loss_of_a_lightning_wandb_logger_run(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger

    class Line(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.0))
            self.b = torch.nn.Parameter(torch.tensor(0.0))
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = ((self.a * x + self.b - y) ** 2).mean()
            self.losses.append(loss.item())
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.linspace(-1, 1, 24)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, 2 * x + 1), batch_size=4)
    model = Line()
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="t", group="lit")
    trainer = pl.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(model, data)
    finally:
        wandb.finish()

    r = read_finished(tmp_path)
    assert r.group == "lit"
    losses = r.series("train/loss")
    assert len(losses) == 5 and losses == model.losses
    assert r.series("trainer/global_step") == [0, 1, 2, 3, 4]


def _write_framed(path: Path, records: list[bytes]) -> None:
    """A .wandb file written by the spec: header, 32 KiB blocks, <IHB chunks, zero-padded block tails."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for data in records:
        first = True
        while True:
            left = 32768 - len(out) % 32768
            if left < 7:
                out.extend(b"\0" * left)
                left = 32768
            piece, data = data[: left - 7], data[left - 7 :]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out.extend(struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind))
            out.extend(piece)
            first = False
            if not data:
                break
    path.write_bytes(bytes(out))


def _history(items: dict) -> bytes:
    rec = pb.Record()
    for k, v in items.items():
        rec.history.item.add(key=k, value_json=json.dumps(v))
    return rec.SerializeToString()


def _history_of_size(size: int) -> bytes:
    """A history record of exactly ``size`` bytes (longer length prefixes only add bytes)."""
    n = size - len(_history({"filler": ""}))
    while len(data := _history({"filler": "f" * n})) > size:
        n -= 1
    assert len(data) == size
    return data


def test_block_padding_and_split_records(tmp_path):
    path = tmp_path / "run-x.wandb"
    first = _history({"v": 0})
    # The filler fills block 0 up to 3 bytes before its end: too short for a chunk header, so padding.
    filler = _history_of_size(32768 - 3 - 7 - (7 + 7 + len(first)))
    _write_framed(path, [first, filler, _history({"v": 1, "s": BIG}), _history({"v": 2})])
    raw = path.read_bytes()
    assert raw[32765:32768] == b"\0\0\0"  # the padded tail exists
    r = read_run(path)
    assert [row.get("v") for row in r.history] == [0, None, 1, 2]
    assert r.series("s") == [BIG]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="W&B run folder not found: .*missing"):
        find_runs(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no W&B run"):
        read_run(tmp_path)
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(b"PK\x03\x04 not a run file")
    with pytest.raises(ValueError, match=r"run-bad.wandb is not a W&B run file"):
        read_run(bad)
    path = tmp_path / "run-x.wandb"
    _write_framed(path, [_history({"v": 0}), _history({"v": 1})])
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"run-x.wandb is corrupt: bad checksum in the chunk at byte \d+"):
        read_run(path)
    # A run cut off mid-record (still running, or killed) yields its complete records.
    _write_framed(path, [_history({"v": 0}), _history({"v": 1})])
    path.write_bytes(path.read_bytes()[:-5])
    assert read_run(path).series("v") == [0]


def test_a_run_is_finished_only_once_its_exit_record_is_written(tmp_path):
    path = tmp_path / "run-x.wandb"
    _write_framed(path, [_history({"v": 0})])
    assert not read_run(path).finished
    with pytest.raises(AssertionError, match=r"no finished W&B run below .*run-x.wandb after 0.3 s"):
        read_finished(path, timeout=0.3)
    exit_record = pb.Record(exit=pb.RunExitRecord(exit_code=0)).SerializeToString()
    _write_framed(path, [_history({"v": 0}), exit_record])
    assert read_finished(path, timeout=0.3).series("v") == [0]


def test_the_logger_stays_offline_when_wandb_was_set_up_in_this_process_before(tmp_path, monkeypatch):
    from lit_sr.loggers import SRWandbLogger

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no credentials: offline is chosen, never a login
    wandb.teardown()
    wandb.setup()  # e.g. a notebook's earlier run, or `lit-sr sweep report` in the same process
    try:
        logger = SRWandbLogger(save_dir=str(tmp_path), name="after-setup")
        logger.log_metrics({"x": 1.0}, step=0)  # Lightning's offline alone (WANDB_MODE=dryrun) tried to log in
        assert logger.experiment.settings.mode in ("offline", "dryrun")
        logger.experiment.finish()
    finally:
        wandb.teardown()
    assert read_finished(tmp_path).history[0]["x"] == 1.0
