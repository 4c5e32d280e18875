"""Suite-wide hook: with BIGTRAIN_REQUIRE_SLURM=1 (set by .ci/run) a skipped ``slurm`` test fails.

Tests marked ``slurm`` skip, with the reason, when the local cluster is not running
(``tools/local_slurm.sh start``); in CI that would hide the whole cluster-launch path, so there
the skip is turned into a failure.
"""

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("BIGTRAIN_REQUIRE_SLURM") == "1" and item.get_closest_marker("slurm"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"BIGTRAIN_REQUIRE_SLURM=1, but this SLURM test was skipped: {reason}"
