"""The cluster subcommands of ``bigtrain``: ``submit`` (one run through submitit) and ``sweep`` (trials as
one SLURM job array, or locally), which share the SLURM options of one job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_submit(args: argparse.Namespace) -> None:
    from bigtrain.launch.submit import follow_text, submit

    job = submit(args.config, args.overrides, submit_options(args))
    print(follow_text(job, job.submission().function.run_dir), flush=True)
    if args.wait:
        print(json.dumps(job.results()[0]))


def submit_options(args: argparse.Namespace):
    from bigtrain.launch.submit import SubmitOptions

    return SubmitOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                         partition=args.partition, time=args.time, account=args.account, qos=args.qos,
                         cpus_per_task=args.cpus_per_task, mem=args.mem, constraint=args.constraint,
                         exclusive=args.exclusive, job_name=args.job_name, folder=args.folder,
                         max_requeues=args.max_requeues, signal_delay_s=args.signal_delay)


def cmd_sweep(args: argparse.Namespace) -> None:
    if args.items[:1] in (["status"], ["report"]):
        return cmd_sweep_results(args)
    from bigtrain.launch.sweep import SweepRequest, parse_halving, run_sweep

    if args.config is None:
        from bigtrain.errors import UserError

        raise UserError("bigtrain sweep needs --config C (the base recipe or YAML); or: bigtrain sweep status|report "
                        "SWEEP_DIR")
    halving = parse_halving(args.halving, args.halving_metric, args.halving_eta) if args.halving else None
    req = SweepRequest(args.config, args.items, args.space, args.trials, args.seed, args.max_parallel, halving,
                       args.executor, args.gpus_per_trial, submit_options(args), args.wait)
    sys.exit(run_sweep(req))


def cmd_sweep_results(args: argparse.Namespace) -> None:
    from bigtrain.launch.sweep.report import markdown, write_report
    from bigtrain.launch.sweep.status import format_status, sweep_status

    if len(args.items) != 2:
        from bigtrain.errors import UserError

        raise UserError(f"bigtrain sweep {args.items[0]} takes one argument, the sweep directory: "
                        f"bigtrain sweep {args.items[0]} SWEEP_DIR")
    sweep_dir = Path(args.items[1])
    if args.items[0] == "status":
        print(format_status(sweep_status(sweep_dir)))
        return
    out = write_report(sweep_dir, args.metric, plot=not args.no_plot)
    print(markdown(out["rows"], out["columns"]), end="")
    print("written: " + ", ".join(str(out[k]) for k in ("csv", "md", "png", "yaml") if k in out))
    if out["best"] is not None:
        print(f"\nbest config ({args.metric}), also in {out['yaml']}:\n")
        print(out["yaml"].read_text(), end="")


def add_slurm_options(p: argparse.ArgumentParser, gpus_required: bool = True) -> None:
    """``bigtrain submit``'s SLURM options (resources of one job; a sweep: of one trial)."""
    p.add_argument("--nodes", type=int, required=gpus_required, default=1)
    p.add_argument("--gpus-per-node", type=int, required=gpus_required, default=0 if not gpus_required else None,
                   help="GPUs per node; one task per GPU")
    p.add_argument("--tasks-per-node", type=int, default=None, help="default: --gpus-per-node (CPU clusters: set it)")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default="24:00:00", help="time limit per start: MINUTES, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--mem", default=None, help="memory per node, e.g. 500G")
    p.add_argument("--constraint", default=None)
    p.add_argument("--exclusive", action="store_true")
    p.add_argument("--job-name", default="bigtrain")
    p.add_argument("--folder", default=None, help="submitit logs and pickles (default: <run.dir>/submitit)")
    p.add_argument("--max-requeues", type=int, default=10, help="give up after this many timeouts (default 10)")
    p.add_argument("--signal-delay", type=int, default=300, help="seconds before the time limit to save (default 300)")


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="hyper-parameter sweep: trials as one SLURM job array (or locally), successive "
                       "halving; `bigtrain sweep status|report SWEEP_DIR` for results",
                       description="bigtrain sweep --config C [--space FILE] [key=v1,v2,... | "
                       "key=loguniform(a,b) ...] [--trials N] [--seed S] [--max-parallel K] [--halving RUNGS] "
                       "[--executor slurm|local] [SLURM options] run.dir=SWEEP_DIR;  bigtrain sweep status SWEEP_DIR;  "
                       "bigtrain sweep report SWEEP_DIR [--metric val_loss]. Distributions: uniform(a,b), "
                       "loguniform(a,b), int(a,b), choice(x,y,...). Re-running the same command resumes.")
    p.add_argument("--config", default=None, help="base recipe name or YAML path")
    p.add_argument("--space", default=None, metavar="FILE", help="YAML: key: [values] or key: loguniform(a,b)")
    p.add_argument("--trials", type=int, default=None, help="random draws per grid point (needed with distributions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    p.add_argument("--max-parallel", type=int, default=1, help="trials at a time (SLURM: the array's %%K)")
    p.add_argument("--halving", default=None, metavar="RUNGS", help="successive halving at these steps, e.g. 10,20")
    p.add_argument("--halving-metric", default="val_loss", help="metric ranked at each rung, lower is better "
                   "(default val_loss)")
    p.add_argument("--halving-eta", type=float, default=2.0, help="keep the best 1/eta at each rung (default 2)")
    p.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    p.add_argument("--gpus-per-trial", type=int, default=0, help="local executor: torchrun processes per trial "
                   "(0 or 1: one process)")
    p.add_argument("--wait", action="store_true", help="slurm: block until every trial is over (always with --halving)")
    p.add_argument("--metric", default="val_loss", help="report: metric to rank and plot (default val_loss)")
    p.add_argument("--no-plot", action="store_true", help="report: skip report.png")
    add_slurm_options(p, gpus_required=False)
    p.add_argument("items", nargs="*", metavar="key=value", help="swept keys (key=v1,v2 or key=dist(a,b)), "
                   "overrides for every trial, run.dir=SWEEP_DIR; or: status|report SWEEP_DIR")
    p.set_defaults(func=cmd_sweep)


def add_submit_parser(sub) -> None:
    p = sub.add_parser("submit", help="queue a run on SLURM with submitit (one task per GPU; requeues on timeout)")
    p.add_argument("--config", default="debug", help="recipe name or YAML path (default: debug)")
    add_slurm_options(p)
    p.add_argument("--wait", action="store_true", help="block until the run has finished and print its summary")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_submit)
