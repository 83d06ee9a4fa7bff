"""The training DataLoader that resumes its patch stream exactly where a checkpoint left it.

Lightning saves the ``state_dict`` of a training DataLoader that has one in every checkpoint (under
``loops.fit_loop.state_dict.combined_loader``) and hands it back to ``load_state_dict`` before the first
iteration of a resumed fit, when the saved epoch was unfinished (after a complete one the next epoch is the
trainer's). The state is the stream's seed, the epoch, and the number of batches the training loop has finished
in that epoch (read from the trainer, not from this loader, which prefetches ahead), so a resumed run draws
exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from lit_sr.data.datasets import TrainPatches


class ResumableLoader(DataLoader):
    """``DataLoader(TrainPatches, batch_size=None, ...)`` that numbers its epochs and can restart mid-epoch.

    ``trainer`` (optional) is the Lightning Trainer whose progress ``state_dict`` reports and whose epoch each
    iteration draws, so a loader rebuilt by ``reload_dataloaders_every_n_epochs`` continues the numbering;
    without one the loader counts its own epochs.
    """

    def __init__(self, dataset: TrainPatches, *args: Any, trainer: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self._trainer = trainer
        self._epoch = int(getattr(trainer, "current_epoch", 0) or 0) - 1  # the last epoch iterated
        self._resume: tuple[int, int] | None = None

    def __iter__(self):
        epoch, start = self._resume if self._resume is not None else (self._next_epoch(), 0)
        self._resume = None
        self._epoch = epoch
        self.dataset.set_position(epoch, start)
        return super().__iter__()

    def _next_epoch(self) -> int:
        """The trainer's epoch: Lightning hands back no state when the saved epoch was complete (a run stopped or
        checkpointed at an epoch's end), and this loader's own count would start over at the saved epoch."""
        try:
            return int(self._trainer.fit_loop.epoch_progress.current.processed)
        except AttributeError:  # no trainer: the epochs this loader has run
            return self._epoch + 1

    def _batches_done(self) -> int:
        try:
            return int(self._trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        except AttributeError:  # no trainer: nothing was trained from this loader
            return 0

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch and batches finished by the training loop in that epoch."""
        return {"seed": int(self.dataset.position[0]), "epoch": self._epoch, "batches": self._batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next iteration continues the saved stream (the next epoch when the saved one was complete)."""
        self.dataset.position[0] = int(state["seed"])
        epoch, done = int(state["epoch"]), int(state["batches"])
        self._resume = (epoch + 1, 0) if done >= len(self) else (epoch, done)
