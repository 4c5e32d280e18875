"""The communication volume of docs/scaling.md's ZeRO-3 model, checked on real DeepSpeed (2 gloo ranks).

Model, per micro-batch and rank (P parameters, d data-parallel ranks, fp32 here: 4 bytes): the
forward all-gathers every partitioned parameter (each rank sends its P/d shard), the backward
gathers again whatever was released in between (at most everything), and the gradients are
reduce-scattered (each rank puts in all P). DeepSpeed's comms logger records the tensor each rank
sends, so: all-gather bytes in [P/d, 2P/d] * 4, reduce-scatter bytes = P * 4.
"""

from __future__ import annotations

import json

import pytest
from launch import run_ranks


def traffic(tmp_path, shards, *overrides: str) -> tuple[int, int, dict]:
    run_ranks("tests/comm_volume_runs.py", 2, [tmp_path / "out.json", shards, *overrides], timeout=300)
    result = json.loads((tmp_path / "out.json").read_text())
    return result["params"], result["dp"], result["ops"]


@pytest.mark.slow
def test_zero3_traffic_per_step_matches_the_scaling_model(tmp_path, shards):
    # parameters released between uses (as in a model far larger than max_live_parameters): gathered twice
    params, dp, ops = traffic(tmp_path, shards, "parallel.max_live_parameters=1000",
                              "parallel.max_reuse_distance=1000", "parallel.prefetch_bucket_size=1000")
    shard_bytes = params * 4 // dp
    assert dp == 2
    assert shard_bytes < ops["all_gather_into_tensor"]["bytes"] <= 2 * shard_bytes, (params, ops)
    assert ops["reduce_scatter_tensor"]["bytes"] == params * 4, (params, ops)
    assert ops["all_reduce"]["bytes"] < 64  # only the loss and the non-finite flag: no gradient all-reduce
