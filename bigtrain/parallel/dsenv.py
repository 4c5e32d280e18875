"""The one place bigtrain imports DeepSpeed, so its process-wide settings are applied first.

- ``DS_ACCELERATOR=cpu`` when torch has no CUDA device (DeepSpeed reads it at import time), and
  then ``LOCAL_SIZE`` (ranks on this host), which spares a subprocess per ZeRO-3 gradient bucket.
- DeepSpeed's CPU comm backend JIT-compiles a shared-memory op (``deepspeed_shm_comm``, ~60 s on
  2 cores) on *every* ``init_distributed``; it only speeds up inference all-reduce, so we mark it
  incompatible in ``deepspeed.ops.__compatible_ops__`` and training collectives go through gloo.
  Set ``BIGTRAIN_DS_SHM=1`` to keep it.
- torch's FutureWarnings about the deprecated collectives DeepSpeed and megatron call (~64 per
  run) are filtered, only those, and DeepSpeed's logger is set to WARNING (``BIGTRAIN_DS_LOG=info``
  restores its chatter).

Every such process-wide setting is listed, with the test that checks it, in docs/patches.md.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import cache


@cache
def import_deepspeed():
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        # Without LOCAL_SIZE, the CPU accelerator's device_count() runs `numactl --hardware` in a
        # subprocess on every call, and ZeRO-3 calls it once per gradient bucket (~20 forks a step).
        local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", "")
        os.environ.setdefault("LOCAL_SIZE", local if local.isdigit() else "1")
    # torch's deprecation notices for the collectives DeepSpeed and megatron call (all_gather_into_tensor...),
    # only those: FutureWarnings raised in torch.distributed whose message says so
    warnings.filterwarnings("ignore", message=r".*torch\.distributed.*deprecated", category=FutureWarning,
                            module=r"torch\.distributed")
    import deepspeed
    import deepspeed.ops

    if os.environ.get("BIGTRAIN_DS_SHM") != "1":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    level = os.environ.get("BIGTRAIN_DS_LOG", "warning").upper()
    logging.getLogger("DeepSpeed").setLevel(level)
    deepspeed.utils.logger.setLevel(level)
    return deepspeed
