"""Hyper-parameter sweeps (``bigtrain sweep``): a search space over config keys, trials run as one
SLURM job array (submitit) or on this machine, successive halving, one results table.

- :mod:`.space`: grid values, seeded random / log-uniform draws, space files;
- :mod:`.plan`: trial ids and directories, every trial checked before anything runs, ``sweep.json``;
- :mod:`.executors`: the job array and the local runner;
- :mod:`.halving`: rung decisions (``halving.json``);
- :mod:`.driver`: the stages of a sweep, resumable;
- :mod:`.status`, :mod:`.report`, :mod:`.figure`: ``bigtrain sweep status|report``.
"""

from bigtrain.launch.sweep.driver import SweepRequest, run_sweep
from bigtrain.launch.sweep.halving import Halving, parse_halving

__all__ = ["Halving", "SweepRequest", "parse_halving", "run_sweep"]
