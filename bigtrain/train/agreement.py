"""One agreement per optimizer step: the facts every rank must share, in one small collective.

After the last backward of a step, and before DeepSpeed's update, every rank contributes one row of
named slots (float64): its loss, its non-finite flags, its data problems, whether it was signalled,
its peak memory, and whatever a callback or an objective adds. :meth:`Agreement.reduce` gathers the
rows of all ranks in one ``all_gather_into_tensor`` (world x slots values: ~100 bytes a rank), copies
them to the host once (the step's only device->host synchronisation outside DeepSpeed) and reduces
each slot there, so every rank gets the same answer. A gather rather than an all-reduce because the
slots need different reductions (sums, maxima, sums over data-parallel ranks only), and for so few
bytes both are one latency-bound message.

Reductions (``op``): ``sum`` and ``max`` over all ranks; ``dp_sum`` over the data-parallel ranks, i.e.
counting each tensor-parallel group once (its ranks hold the same loss and read the same samples).

Slots are added before the first step, in the same order on every rank (each callback in its
``on_train_start``; the step's own in train/step.py). A slot's value is set during the step, as a Python
number or as a 0-d tensor on the device (no synchronisation), or read from its ``source`` callable at
reduce time; an unset slot counts 0. Objectives needing a global count (e.g. masked tokens) add a
``dp_sum`` slot and read it back from :attr:`StepResult.agreed <bigtrain.train.step.StepResult>`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

OPS = ("sum", "max", "dp_sum")
_LEADER = "_dp_leader"  # 1 on tensor-parallel rank 0: the row that counts for dp_sum


class Agreement:
    def __init__(self, device: torch.device, tp_rank: int = 0):
        self.device = device
        self.names: list[str] = []
        self.ops: list[str] = []
        self.sources: dict[int, Callable[[], float]] = {}
        self.values: dict[int, float | torch.Tensor] = {}
        self.add(_LEADER, "sum", source=lambda: 1.0 if tp_rank == 0 else 0.0)
        self.reductions = 0  # collectives issued (tests count them against the per-step budget)

    def add(self, name: str, op: str = "sum", source: Callable[[], float] | None = None) -> None:
        """A named slot; adding an existing name again with the same op is a no-op."""
        if op not in OPS:
            raise ValueError(f"agreement slot {name!r}: op must be one of {OPS}, got {op!r}")
        if name in self.names:
            if self.ops[self.names.index(name)] != op:
                raise ValueError(f"agreement slot {name!r} exists with op {self.ops[self.names.index(name)]!r}")
            return
        self.names.append(name)
        self.ops.append(op)
        if source is not None:
            self.sources[len(self.names) - 1] = source

    def set(self, name: str, value: float | torch.Tensor) -> None:
        """This rank's value for the current step (a tensor stays on its device until :meth:`reduce`)."""
        self.values[self.names.index(name)] = value.detach() if isinstance(value, torch.Tensor) else float(value)

    def local_row(self) -> torch.Tensor:
        """(slots,) float64 on the device: host values in one copy, device values written in place."""
        host = [0.0] * len(self.names)
        for i, source in self.sources.items():
            host[i] = float(source())
        tensors = {}
        for i, value in self.values.items():
            if isinstance(value, torch.Tensor):
                tensors[i] = value
            else:
                host[i] = value
        row = torch.tensor(host, dtype=torch.float64).to(self.device, non_blocking=True)
        for i, value in tensors.items():
            row[i] = value.to(device=self.device, dtype=torch.float64)
        return row

    def reduce(self) -> dict[str, float]:
        """Collective (every rank, once per step): -> {slot: agreed value}; clears the step's values."""
        row = self.local_row()
        self.values = {}
        if dist.is_initialized() and dist.get_world_size() > 1:
            rows = torch.empty(dist.get_world_size() * row.numel(), dtype=row.dtype, device=row.device)
            dist.all_gather_into_tensor(rows, row)  # flat output: gloo accepts no (world, slots) shape
            rows = rows.view(-1, row.numel())
            self.reductions += 1
        else:
            rows = row.unsqueeze(0)
        table = rows.tolist()  # the one device->host synchronisation
        return {name: self._reduce(i, op, table) for i, (name, op) in enumerate(zip(self.names, self.ops))
                if name != _LEADER}

    @staticmethod
    def _reduce(i: int, op: str, table: list[list[float]]) -> float:
        column = [row[i] for row in table]
        if op == "max":
            return max(column)
        if op == "dp_sum":
            return sum(value for value, row in zip(column, table) if row[0])
        return sum(column)
