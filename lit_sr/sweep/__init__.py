"""Optuna sweeps of lit_sr methods, every trial a ``lit-sr fit`` run logged to W&B.

- ``space``: sweep files (``sweeps/<method>.yaml``) -> ``Sweep`` (search space, study settings, trial configs)
- ``study``: storage, trial slots, worker processes, trial child processes (``run_sweep``, ``run_worker``)
- ``trial``: the Lightning callback inside each trial (pruning, objective, result file)
- ``report``: best trial, top-k table, plots, W&B summary run
- ``cli``: ``lit-sr sweep ...``
"""

from lit_sr.sweep.space import ParamSpec, Sweep, SweepError, load_sweep

__all__ = ["ParamSpec", "Sweep", "SweepError", "load_sweep"]
