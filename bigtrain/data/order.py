"""The global sample order: stream position -> sample index, independent of how many ranks read it.

The training stream of a split with N samples is the infinite sequence of positions 0, 1, 2, ...
Position p belongs to epoch ``p // N`` and names sample ``perm_e(p % N)``, where ``perm_e`` is a
pseudo-random permutation of [0, N) keyed by (seed, epoch): a 4-round Feistel network over the
smallest power-of-two domain >= N (b bits, split into halves of floor(b/2) and ceil(b/2) bits), with
cycle-walking back into [0, N) (fewer than half the domain's values lie outside, so a value walks
about once on average). It needs no index file and no memory, any position is computed in O(1), and
every epoch is a fresh shuffle.

Optimizer step s consumes positions [s*G, (s+1)*G) of the stream (G = global batch); data-parallel
rank r takes the contiguous slice [s*G + r*G/D, s*G + (r+1)*G/D). So the set and order of samples
per step depends only on (seed, G), never on D, the number of DataLoader workers or restarts.
"""

from __future__ import annotations

import numpy as np

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
ROUNDS = 4


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Permutation:
    """A keyed bijection of [0, n) evaluated element-wise on arrays."""

    def __init__(self, n: int, key: int):
        if n <= 0:
            raise ValueError(f"cannot permute an empty range (n={n})")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.lo_bits = np.uint64(bits // 2)  # x = hi (ceil(b/2) bits) | lo (floor(b/2) bits)
        self.hi_bits = np.uint64(bits - bits // 2)
        self.lo_mask = np.uint64((1 << int(self.lo_bits)) - 1)
        self.hi_mask = np.uint64((1 << int(self.hi_bits)) - 1)
        base = mix64(np.array([key], dtype=np.uint64))[0]
        self.round_keys = [mix64(np.array([base + np.uint64(i + 1)], dtype=np.uint64))[0] for i in range(ROUNDS)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        """Rounds of (hi, lo) -> (lo, hi ^ F_k(lo)), re-split after each: a bijection of b-bit values."""
        for k in self.round_keys:
            hi, lo = x >> self.lo_bits, x & self.lo_mask
            x = (lo << self.hi_bits) | (hi ^ (mix64(lo ^ k) & self.hi_mask))
        return x

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = self._feistel(np.asarray(idx, dtype=np.uint64))
            outside = out >= self.n
            while outside.any():  # cycle-walk: the domain is < 4n, so ~1-3 extra rounds on average
                out[outside] = self._feistel(out[outside])
                outside = out >= self.n
        return out.astype(np.int64)


class GlobalOrder:
    """Position in the infinite training stream -> (epoch, sample index)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self._perms: dict[int, Permutation] = {}

    def epoch_of(self, position: int) -> int:
        return position // self.num_samples

    def permutation(self, epoch: int) -> Permutation:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = Permutation(self.num_samples, key=self.seed * 1_000_003 + epoch)
        return self._perms[epoch]

    def samples(self, positions: np.ndarray) -> np.ndarray:
        """Sample indices for an array of stream positions."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_samples)
        if not self.shuffle:
            return offsets
        out = np.empty_like(offsets)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self.permutation(int(epoch))(offsets[sel])
        return out


def rank_positions(start_sample: int, step: int, micro: int, *, global_batch: int, micro_batch: int,
                   dp_rank: int, dp_size: int) -> np.ndarray:
    """Stream positions of micro-batch ``micro`` of step ``step`` (counted from ``start_sample``) on a rank."""
    per_rank = global_batch // dp_size
    base = start_sample + step * global_batch + dp_rank * per_rank + micro * micro_batch
    return np.arange(base, base + micro_batch, dtype=np.int64)
