"""The global sample order: stream position -> sample index, independent of how many ranks read it.

The training stream of a split with N samples is the infinite sequence of positions 0, 1, 2, ...
Position p belongs to epoch ``p // N`` and names sample ``perm_e(p % N)``, where ``perm_e`` is a
pseudo-random permutation of [0, N) keyed by (seed, epoch): a 4-round mixed-radix Feistel network on
[0, a*b) with a = ceil(sqrt(N)), b = ceil(N / a) (so a*b - N < a), cycle-walking the few values that
land in [N, a*b) back into [0, N). It needs no index file and no memory, any position is computed in
O(1), and every epoch is a fresh shuffle. Definition, step by step: docs/data.md.

Optimizer step s consumes positions [s*G, (s+1)*G) of the stream (G = global batch); data-parallel
rank r takes the contiguous slice [s*G + r*G/D, s*G + (r+1)*G/D). So the set and order of samples
per step depends only on (seed, G), never on D, the number of DataLoader workers or restarts.
"""

from __future__ import annotations

import math

import numpy as np

ROUNDS = 4


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic); returns a new array."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def round_keys(key: int) -> np.ndarray:
    """(ROUNDS,) uint64 round keys of a permutation key: mix64(mix64(key) + i + 1)."""
    base = int(mix64(np.array([key % 2**64], dtype=np.uint64))[0])
    return mix64(np.array([(base + i + 1) % 2**64 for i in range(ROUNDS)], dtype=np.uint64))


class Permutation:
    """A keyed bijection of [0, n) evaluated element-wise on arrays.

    ``keys``: the (ROUNDS,) round keys, or (ROUNDS, len(idx)) to evaluate several keyed permutations
    of [0, n) at once (one per element: the epochs of a chunk of positions).
    """

    def __init__(self, n: int, key: int | None = None):
        if n <= 0:
            raise ValueError(f"cannot permute an empty range (n={n})")
        self.n = n
        self.a = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
        self.b = -(-n // self.a)  # a * b >= n, and a * b - n < a
        self.round_keys = None if key is None else round_keys(key)

    def _feistel(self, x: np.ndarray, keys) -> np.ndarray:
        """Rounds of x = hi * b + lo -> lo * a + (hi + F_k(lo)) mod a, then (a, b) swap roles.

        Each round is a bijection of [0, a*b): lo = x' // a and hi = (x' % a - F_k(lo)) mod a invert it.
        """
        a, b = np.uint64(self.a), np.uint64(self.b)
        for k in keys:
            hi, lo = np.divmod(x, b)  # hi in [0, a), lo in [0, b)
            f = mix64(lo ^ k)
            f %= a
            f += hi
            f %= a
            x = lo * a
            x += f
            a, b = b, a
        return x

    def __call__(self, idx: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        keys = self.round_keys if keys is None else keys
        out = self._feistel(np.asarray(idx, dtype=np.uint64), keys)
        walk = np.flatnonzero(out >= self.n)  # cycle-walk: fewer than 1 in sqrt(n) values land outside [0, n)
        values = out[walk]
        while len(walk):
            values = self._feistel(values, keys if keys.ndim == 1 else keys[:, walk])
            inside = values < self.n
            out[walk[inside]] = values[inside]
            walk, values = walk[~inside], values[~inside]
        return out.astype(np.int64)


class GlobalOrder:
    """Position in the infinite training stream -> (epoch, sample index)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.permutation = Permutation(num_samples)
        self._keys: dict[int, np.ndarray] = {}

    def epoch_of(self, position: int) -> int:
        return position // self.num_samples

    def epoch_keys(self, epoch: int) -> np.ndarray:
        if epoch not in self._keys:
            if len(self._keys) > 64:
                self._keys.clear()
            self._keys[epoch] = round_keys(self.seed * 1_000_003 + epoch)
        return self._keys[epoch]

    def samples(self, positions: np.ndarray) -> np.ndarray:
        """Sample indices for an array of stream positions."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_samples)
        if not self.shuffle:
            return offsets
        first = int(epochs.min()) if len(epochs) else 0
        if len(epochs) == 0 or first == epochs.max():  # the usual case: a chunk inside one epoch
            return self.permutation(offsets, self.epoch_keys(first))
        unique, which = np.unique(epochs, return_inverse=True)
        keys = np.stack([self.epoch_keys(int(e)) for e in unique], axis=1)  # (ROUNDS, epochs)
        return self.permutation(offsets, keys[:, which])


def rank_positions(start_sample: int, step: int, micro: int, *, global_batch: int, micro_batch: int,
                   dp_rank: int, dp_size: int) -> np.ndarray:
    """Stream positions of micro-batch ``micro`` of step ``step`` (counted from ``start_sample``) on a rank."""
    per_rank = global_batch // dp_size
    base = start_sample + step * global_batch + dp_rank * per_rank + micro * micro_batch
    return np.arange(base, base + micro_batch, dtype=np.int64)
