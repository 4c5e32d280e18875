#!/bin/bash
# Pretrain on N nodes x G GPUs: one task per GPU, started by srun (no ssh, no pdsh, no torchrun).
#
#   sbatch [sbatch options] slurm/pretrain.sh CONFIG [key=value ...]
#   sbatch -N 4 --partition=gpu --time=2-00:00:00 slurm/pretrain.sh my_recipe.yaml run.dir=runs/exp1
#   sbatch -N 2 --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 slurm/pretrain.sh debug  # local cluster
#
# CONFIG is a recipe name or YAML path, then dotted overrides (see `bigtrain config keys`). Nodes,
# tasks and GPUs come from the sbatch options: keep --ntasks-per-node equal to --gpus-per-node.
# The job runs in the environment that submitted it (sbatch's default --export=ALL): activate the
# virtualenv (or set BIGTRAIN_PYTHON=/path/to/python) before `sbatch`, and submit from the directory
# relative run.dir paths refer to; run.dir must be on a filesystem every node sees.
#
# Lifecycle: SLURM sends USR1 to every task 5 minutes before the time limit (and on preemption, with
# SlurmctldParameters=preempt_send_user_signal). The ranks agree to stop after the current step, save
# a checkpoint and exit 75; this script then requeues the job, which resumes from that checkpoint in
# run.dir. A finished run exits 0 and is not requeued; nor is any failure: 2 bad config, 3 diverged
# (non-finite steps), 4 hang watchdog (see <run.dir>/hangs/; resubmit to resume from the last checkpoint).
# At most BIGTRAIN_MAX_REQUEUES (default 20) restarts, counting preemptions and node failures.
# Logs: %x-%j.out in the submit directory (one file per job, appended across requeues).
#
#SBATCH --job-name=bigtrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8           # one task per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8             # data loader workers + host threads per rank
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300             # USR1 to the tasks 300 s before the time limit: save and requeue
#SBATCH --requeue                     # may be requeued (preemption, node failure, exit 75 below)
#SBATCH --open-mode=append            # a requeued job appends to its log instead of truncating it
#SBATCH --output=%x-%j.out
set -euo pipefail

REQUEUE_EXIT=75 # bigtrain/pretrain.py: stopped by a signal after saving a checkpoint
MAX_REQUEUES=${BIGTRAIN_MAX_REQUEUES:-20}
PYTHON=${BIGTRAIN_PYTHON:-python}

if [ $# -lt 1 ] || [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "usage: sbatch [sbatch options] slurm/pretrain.sh CONFIG [key=value ...]" >&2
  exit 2
fi
CONFIG=$1
shift

# Rendezvous: rank 0 runs on the first node of the allocation. The port is derived from the job id,
# so that two jobs sharing a node (or emulated nodes sharing one network stack) do not collide, and a
# requeued job (same id) gets the same port again.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

# NCCL (GPU clusters; ignored by gloo). Uncomment what your fabric needs:
# export NCCL_SOCKET_IFNAME=ib0         # interface for NCCL's bootstrap/socket traffic (not docker0/lo)
# export NCCL_IB_HCA=mlx5               # which InfiniBand adapters to use
# export NCCL_DEBUG=INFO                # print the chosen transport/rings once (debug hangs)
# export NCCL_ASYNC_ERROR_HANDLING=1    # a failed collective aborts instead of hanging until the timeout
# export GLOO_SOCKET_IFNAME=ib0         # same for gloo (CPU runs, and torch's gloo side groups)

# Check the config and its layout for this many ranks once, before starting them: a bad config
# fails here in a second with one "error: ..." line naming the key (exit 2).
"$PYTHON" -m bigtrain.cli config show --config "$CONFIG" --world-size "${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES}" "$@" > /dev/null

restart=${SLURM_RESTART_COUNT:-0}
echo "[slurm/pretrain.sh] job $SLURM_JOB_ID start $((restart + 1)) on $SLURM_JOB_NUM_NODES node(s) ($SLURM_JOB_NODELIST)," \
     "$SLURM_NTASKS tasks, master $MASTER_ADDR:$MASTER_PORT: $CONFIG $*"

# One task per GPU. RANK/LOCAL_RANK/WORLD_SIZE are per task, so they are set inside each task.
# Each rank picks its GPU itself (bigtrain/parallel/world.py: LOCAL_RANK of the GPUs it sees, or 0 when
# it sees one, as with --gpus-per-task=1) and, for parallel.tensor_parallel > 1, sets
# CUDA_DEVICE_MAX_CONNECTIONS=1 before CUDA starts (megatron's TP all-reduce/GEMM overlap needs it).
# --wait=120: once one task has exited, the others get 120 s, then are killed: a crashed rank does not
# leave the rest hung in a collective. (Not --kill-on-bad-exit: it would kill ranks that are about to
# exit 75 themselves, and srun would then report 143 instead of 75.)
status=0
srun --wait=120 bash -c \
  'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' \
  bigtrain-rank "$PYTHON" -u -m bigtrain.pretrain --config "$CONFIG" "$@" || status=$?

if [ $status -eq $REQUEUE_EXIT ]; then
  if [ "$restart" -ge "$MAX_REQUEUES" ]; then
    echo "[slurm/pretrain.sh] checkpoint saved, but not requeued: $restart restarts (BIGTRAIN_MAX_REQUEUES=$MAX_REQUEUES)"
    exit $REQUEUE_EXIT
  fi
  echo "[slurm/pretrain.sh] checkpoint saved; requeueing job $SLURM_JOB_ID (restart $((restart + 1)))"
  # Preemption may already have requeued the job: then this fails harmlessly.
  scontrol requeue "$SLURM_JOB_ID" || true
  exit 0
fi
echo "[slurm/pretrain.sh] srun exited with $status"
exit $status
