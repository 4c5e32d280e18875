"""Cluster launchers: submitit jobs (``bigtrain submit``) and hyper-parameter sweeps as job arrays
(``bigtrain sweep``, :mod:`bigtrain.launch.sweep`). The SLURM rendezvous they share with
``slurm/pretrain.sh`` is bigtrain/parallel/rendezvous.py. See docs/cluster.md.

    from bigtrain.launch import submit
    job = submit("debug", ["run.dir=runs/exp1"], nodes=2, gpus_per_node=8, partition="gpu", time="24:00:00")
    job.results()[0]        # rank 0's summary once the run has finished (after any requeues)
"""

from bigtrain.launch.submit import LaunchError, SubmitOptions, submit

__all__ = ["LaunchError", "SubmitOptions", "submit"]
