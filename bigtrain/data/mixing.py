"""Mixing several sources into one stream: a deterministic function of the global stream position.

Positions are grouped in blocks of ``B = data.mix_block_size``. Every block holds exactly ``c_s``
positions of source s, where ``c = apportion(weights, B)`` (largest remainder: the integer counts
closest to ``B * w_s / sum(w)``, ties to the earlier source). Inside block b the B slots are shuffled
by a keyed permutation (order.py's Feistel network, key (seed, b)): slot j goes to
``k = perm_b(j)``; slots ``k`` in ``[C_s, C_s + c_s)`` (``C`` = prefix sums of ``c``) belong to source s,
and position ``b * B + j`` reads source s's own stream position ``b * c_s + (k - C_s)``. Each source
then maps its own positions to samples with its own per-epoch permutation, so it runs through its
epochs at its own pace.

Everything is O(1) per position (no state, no index): resume and elasticity work exactly as with
one source. Proportions: exact per block when ``B * w_s / sum(w)`` are integers; otherwise each
source's share of every block differs from ``w_s / sum(w)`` by less than ``1 / B``. A weight too small
to get one slot per block is a config error. With one source the mixture is the identity.
"""

from __future__ import annotations

import numpy as np

from bigtrain.data.order import Permutation


def apportion(weights: list[float], block: int) -> list[int]:
    """Largest-remainder integer counts summing to ``block``, proportional to ``weights``."""
    total = float(sum(weights))
    quotas = [w * block / total for w in weights]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[:block - sum(counts)]:
        counts[i] += 1
    return counts


class Mixture:
    def __init__(self, weights: list[float], block_size: int, seed: int):
        self.num_sources = len(weights)
        self.block = block_size
        self.seed = seed
        self.counts = np.array(apportion(weights, block_size), dtype=np.int64)
        self.bounds = np.cumsum(self.counts)  # slot k belongs to the first source with k < bounds[s]
        self.firsts = self.bounds - self.counts
        self._perms: dict[int, Permutation] = {}

    def permutation(self, block: int) -> Permutation:
        if block not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            self._perms[block] = Permutation(self.block, key=(self.seed * 1_000_003 + block) ^ 0x6D69785F)
        return self._perms[block]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, position in that source's own stream) of each global stream position."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.num_sources == 1:
            return np.zeros_like(positions), positions
        blocks, slots = np.divmod(positions, self.block)
        shuffled = np.empty_like(slots)
        for b in np.unique(blocks).tolist():
            sel = blocks == b
            shuffled[sel] = self.permutation(b)(slots[sel])
        source = np.searchsorted(self.bounds, shuffled, side="right")
        return source, blocks * self.counts[source] + shuffled - self.firsts[source]

    def consumed(self, position: int) -> np.ndarray:
        """Samples drawn from each source by the positions [0, position)."""
        full, rest = divmod(int(position), self.block)
        counts = full * self.counts
        if rest and self.num_sources > 1:
            source, _ = self.locate(np.arange(full * self.block, position))
            counts = counts + np.bincount(source, minlength=self.num_sources)
        elif rest:
            counts = counts + rest
        return counts
