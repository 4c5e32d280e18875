"""docs/scaling.md's recommended-layout table is `bigtrain plan --recipes-table`'s output, byte for byte
(regenerate: replace the lines between the markers with that command's output)."""

from __future__ import annotations

import subprocess
import sys

from launch import REPO

BEGIN, END = "<!-- begin: bigtrain plan --recipes-table -->", "<!-- end: bigtrain plan --recipes-table -->"


def test_scaling_doc_table_is_plans_output():
    doc = (REPO / "docs" / "scaling.md").read_text()
    table = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    out = subprocess.run([sys.executable, "-m", "bigtrain.cli", "plan", "--recipes-table"], cwd=REPO, text=True,
                         capture_output=True, timeout=60, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert table == out.stdout.strip()
    assert "| llama-70b | 68.98B | 8 × 8 | 8 | on | 3 |" in table  # the 70B row: TP 8 with SP, 8 nodes


def test_scaling_doc_predictions_are_the_tools_output():
    doc = (REPO / "docs" / "scaling.md").read_text()
    out = subprocess.run([sys.executable, "tools/scaling_model.py"], cwd=REPO, text=True, capture_output=True,
                         timeout=120, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in doc
