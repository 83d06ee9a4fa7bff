"""Optuna sweeps of lit_sr methods, every trial a ``lit-sr fit`` run logged to W&B.

- ``config``: sweep files (``sweeps/<method>.yaml``) -> ``Sweep`` (search space, study settings, trial configs)
- ``study``: storage, the objective (one child ``lit-sr fit`` per trial), workers (``run_sweep``, ``run_worker``)
- ``trial``: the Lightning callback inside each trial (pruning, result file)
- ``report``: best trial, top-k table, plots, the best trial's test table
- ``cli``: ``lit-sr sweep ...``
"""

from lit_sr.sweep.config import Param, Study, Sweep, SweepError, SweepFile, load_sweep

__all__ = ["Param", "Study", "Sweep", "SweepError", "SweepFile", "load_sweep"]
