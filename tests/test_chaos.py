"""Short form of tools/chaos.py (CI): SIGKILL the whole job twice at random steps, restart it each time,
and require metrics.jsonl to equal the uninterrupted run's at every step, bit for bit (fp32, CPU)."""

from __future__ import annotations

import pytest

from fault_runs import RANKS, STEPS, reference_run
from tiny_run import tiny_shards

pytestmark = pytest.mark.slow


def test_two_random_sigkills_leave_the_metrics_bit_identical(tmp_path_factory, tmp_path):
    from chaos import run_chaos

    reference = reference_run(tmp_path_factory)
    report = run_chaos(tmp_path / "chaos", kills=2, steps=STEPS, ranks=RANKS, tp=1,
                       shards=tiny_shards(tmp_path_factory), reference=reference)
    print(report.text())
    assert report.ok, report.text()
    assert report.steps_compared == STEPS
    assert len(report.kills) == 2 and report.launches == 3, report.text()
