"""The training loader: exact resume (0, 1, 2 workers; mid-epoch and across epochs) in O(1), elastic
resume at another data-parallel size, and a JSON state that refuses a different stream."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bigtrain.data.errors import DataError
from bigtrain.data.loader import StreamSpec, TrainLoader
from bigtrain.data.order import GlobalOrder

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import ids_source  # noqa: E402

N, G, M, SEED = 50, 8, 2, 7  # 50 samples: an epoch ends inside step 6 (positions 48..55)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return ids_source(tmp_path_factory.mktemp("ids") / "src", N)


def rank_loader(source, dp_rank: int, dp_size: int, workers: int = 0, state: dict | None = None) -> TrainLoader:
    return TrainLoader([source], StreamSpec(G, M, dp_rank, dp_size, SEED), num_workers=workers, state=state)


def steps_of(loader: TrainLoader, steps: int) -> list[list[int]]:
    """Sample ids of each step's micro-batches on this rank (first token of each sample)."""
    return [np.concatenate([t[:, 0].numpy() for t in loader.next_step()]).astype(np.int64).tolist()
            for _ in range(steps)]


def global_steps(source, dp_size: int, steps: int, workers: int = 0, state: dict | None = None):
    """Per step, the global batch as the concatenation of ranks 0..D-1 (separate loader instances)."""
    loaders = [rank_loader(source, r, dp_size, workers, state) for r in range(dp_size)]
    per_rank = [steps_of(loader, steps) for loader in loaders]
    states = [loader.state_dict() for loader in loaders]
    assert all(s == states[0] for s in states)  # the state is global: identical on every rank
    return [sum((per_rank[r][s] for r in range(dp_size)), []) for s in range(steps)], states[0]


def expected(start_step: int, steps: int) -> list[list[int]]:
    """The definition (order.py): step s reads positions [s*G, (s+1)*G), position p -> perm_{p//N}(p % N)."""
    order = GlobalOrder(N, SEED)
    return [order.samples(np.arange(s * G, (s + 1) * G)).tolist() for s in range(start_step, start_step + steps)]


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("resume_step", [3, 7])  # position 24 (mid-epoch 0) and 56 (epoch 1, just past the boundary)
def test_resume_is_exact_for_any_worker_count(source, workers, resume_step):
    total = 14  # 112 positions: the run crosses two epoch boundaries
    uninterrupted, _ = global_steps(source, 2, total, workers)
    assert uninterrupted == expected(0, total)
    loaders = [rank_loader(source, r, 2, workers) for r in range(2)]
    for loader in loaders:
        steps_of(loader, resume_step)
    state = json.loads(json.dumps(loaders[0].state_dict()))  # what meta.json holds
    assert state["position"] == resume_step * G
    for rank in range(2):
        resumed = steps_of(rank_loader(source, rank, 2, workers, state), total - resume_step)
        mine = [step[rank * G // 2:(rank + 1) * G // 2] for step in uninterrupted[resume_step:]]
        assert resumed == mine, (rank, workers)


def test_epochs_cover_every_sample_then_reshuffle(source):
    steps, _ = global_steps(source, 1, 25)  # 200 positions = 4 epochs
    flat = sum(steps, [])
    epochs = [flat[e * N:(e + 1) * N] for e in range(4)]
    assert all(sorted(e) == list(range(N)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4


@pytest.mark.parametrize("position", [10**7, 10**15])
def test_resume_far_into_the_stream_is_o1(source, position):
    """No replay: starting at 10^15 (20 trillion epochs of 50 samples) reads just the next step."""
    state = {**rank_loader(source, 0, 1).state_dict(), "position": position}
    result = {}

    def run():
        loader = rank_loader(source, 0, 1, state=state)
        result["ids"] = steps_of(loader, 1)[0]
        result["position"] = loader.state_dict()["position"]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)  # a guard against replay (which would never finish), not a timing measurement
    assert not thread.is_alive()
    assert result["ids"] == GlobalOrder(N, SEED).samples(np.arange(position, position + G)).tolist()
    assert result["position"] == position + G


@pytest.mark.parametrize("new_dp, workers", [(1, 0), (4, 0), (4, 2)])
def test_elastic_resume_from_dp2_to_other_sizes(source, new_dp, workers):
    """Checkpoint at DP=2 after 5 steps; DP=1 or DP=4 continue with exactly the uninterrupted global batches."""
    total, at = 12, 5
    uninterrupted, _ = global_steps(source, 2, total)
    _, state = global_steps(source, 2, at)
    resumed, final = global_steps(source, new_dp, total - at, workers, state=json.loads(json.dumps(state)))
    assert resumed == uninterrupted[at:]
    assert final["position"] == total * G


def test_state_refuses_a_different_stream(source, tmp_path):
    state = rank_loader(source, 0, 1).state_dict()
    with pytest.raises(DataError, match=r"train\.seed was 7, now 8"):
        TrainLoader([source], StreamSpec(G, M, 0, 1, SEED + 1), state=state)
    other = ids_source(tmp_path / "src", N + 1)  # same name, one more sample
    with pytest.raises(DataError, match=r"the sources were \(name, weight, train samples\) \[\('src', 1\.0, 50\)\], "
                                        r"now \[\('src', 1\.0, 51\)\]"):
        TrainLoader([other], StreamSpec(G, M, 0, 1, SEED), state=state)
    with pytest.raises(DataError, match="format None"):
        TrainLoader([source], StreamSpec(G, M, 0, 1, SEED), state={"position": 3})
