"""``bigtrain bench``: training throughput through the full stack beside a bare PyTorch baseline (main.py)."""
