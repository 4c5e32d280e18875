"""Learning-rate schedule: linear warmup, then cosine decay to ``lr * min_lr_ratio``."""

from __future__ import annotations

import math
from typing import Callable

from bigtrain.config.schema import TrainConfig


def lr_lambda(train: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based), for ``LambdaLR``."""
    warmup, total, floor = train.warmup_steps, train.steps, train.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        decay_steps = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / decay_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
