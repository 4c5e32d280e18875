"""``bigtrain plot RUN_DIR`` writes a valid PNG of a run's curves."""

from __future__ import annotations

import json
import math

from bigtrain.cli import main


def write_metrics(run_dir, steps=30):
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 7 * math.exp(-s / 20), "lr": 1e-3 * min(1, s / 5), "grad_norm": 1 / s,
               "tokens_per_sec": 1000 + s, "mfu": 0.3, "skipped": s == 13}
        if s == 13:
            row["loss"] = row["grad_norm"] = None
        if s % 10 == 0:
            row.update(val_loss=row["loss"] + 0.1, val_ppl=math.exp(row["loss"] + 0.1))
        rows.append(row)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_writes_a_png(tmp_path):
    import matplotlib.image

    write_metrics(tmp_path / "run")
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 500 and image.shape[1] >= 900 and image.std() > 0.05  # a real picture, not blank
    assert main(["plot", str(tmp_path / "run")]) == 0  # default: RUN_DIR/metrics.png
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 10_000


def test_plot_of_a_directory_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert f"error: {tmp_path / 'metrics.jsonl'} does not exist" in capsys.readouterr().err
