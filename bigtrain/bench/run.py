"""``bigtrain bench``: N training steps of a named size through the full stack, and the bare baseline.

Order, in one process per rank (single process, or one per rank under torchrun/deepspeed):

1. config (sizes.py + device defaults + overrides, config.py), validated; shards found or built (data.py);
2. the process group; the device's GEMM rate in the run precision, measured on every rank at once
   (before and again after the steps; the better one is the ceiling);
3. bigtrain: ``build_engine`` (DeepSpeed ZeRO over megatron layers, fast-path switches) -> the real
   ``Trainer`` loop and ``train_step`` with the non-finite guard, health and metrics callbacks ->
   ``warmup + steps`` steps from the real loader; forward/backward/optimizer timed (timing.py);
4. bare (bare.py, TP=1 only): the same model in plain PyTorch from bigtrain's initial weights, on
   the micro-batches bigtrain consumed, for as many steps, timed the same way. Its first-step loss
   must equal bigtrain's (report.py: same weights, same tokens).
   *Sequential* (default on CUDA): after bigtrain's run, whose engine is freed first, so each side's
   peak memory is its own. *Interleaved* (default on CPU): built after bigtrain's warm-up steps (whose
   peak memory is bigtrain's), then one bare step after each bigtrain step, so both see the same
   machine load: on a shared CPU box the load moves more between two sequential runs than the
   overhead we want to measure. The bare side's memory is then not separable (reported as null).
5. one result dict (report.py).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from bigtrain.bench.bare import BareLlama, BareTrainer, copy_weights
from bigtrain.bench.data import Recorder
from bigtrain.bench.timing import PeakMemory, PhaseTimer, TimedEngine, cpu_seconds
from bigtrain.config.schema import Config
from bigtrain.parallel.world import World
from bigtrain.train.flops import DTYPES, Peak, measure_peak
from bigtrain.train.loop import Callback, Trainer, TrainState


@dataclass
class Phase:
    """What one side (bigtrain or bare) measured on this rank."""
    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)  # wall seconds per measured step
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds per measured step
    breakdown: list[dict[str, float]] = field(default_factory=list)  # per measured step, PHASES + other
    peak_memory_gb: float | None = None
    memory_kind: str = ""


def record(out: Phase, wall: float, cpu: float, phases: dict[str, float]) -> None:
    out.step_times.append(wall)
    out.cpu_times.append(cpu)
    out.breakdown.append({**phases, "other": wall - sum(phases.values())})


def measure_ceiling(world: World, precision: str) -> Peak:
    """The device's GEMM rate in the run's precision, measured now on every rank at once (mean)."""
    size = 8192 if world.device.type == "cuda" else 1024
    measured = measure_peak(world.device, precision, size=size, seconds=1.0)
    value = torch.tensor([measured.flops], dtype=torch.float64, device=world.device)
    dist.all_reduce(value)
    return Peak(value.item() / world.world_size, measured.source)


class StepClock(Callback):
    """Per-step wall/CPU time of the bigtrain loop (from the end of the previous step's callbacks),
    losses and phases. ``restart`` excludes work done after it (an interleaved bare step)."""

    def __init__(self, timer: PhaseTimer, warmup: int, phase: Phase):
        self.timer, self.warmup, self.out = timer, warmup, phase

    def on_train_start(self, trainer: Trainer) -> None:
        self.restart()

    def restart(self) -> None:
        self.last, self.last_cpu = time.perf_counter(), cpu_seconds()

    def on_step_end(self, trainer: Trainer, result) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        phases = {"data_wait": result.data_wait, **self.timer.collect()}
        self.out.losses.append(result.loss)
        if trainer.state.step > self.warmup:
            record(self.out, now - self.last, cpu - self.last_cpu, phases)
        self.last, self.last_cpu = now, cpu


class BareSide:
    """The bare model and trainer from bigtrain's initial weights, stepping through the recorded batches."""

    def __init__(self, cfg: Config, world: World, weights: dict, batches: list[torch.Tensor], accum: int):
        from bigtrain.parallel.optimize import optimize_model

        dtype = DTYPES[cfg.train.precision]
        model = BareLlama(cfg.model, cfg.model.vocab_size).to(world.device, dtype)
        copy_weights(model, weights)
        optimize_model(model, cfg.model.activation_checkpointing, cfg.train.compile)
        self.trainer = BareTrainer(model, cfg.train, dtype)
        self.device, self.batches, self.accum = world.device, batches, accum
        self.timer, self.out, self.done = PhaseTimer(world.device), Phase(), 0

    def step(self, measured: bool) -> None:
        start, cpu = time.perf_counter(), cpu_seconds()
        micro = self.batches[self.done * self.accum:(self.done + 1) * self.accum]
        tokens = [t.to(self.device, non_blocking=True).long() for t in micro]  # (M, T+1) each
        data_wait = time.perf_counter() - start
        total = torch.zeros((), device=self.device)
        for batch in tokens:
            with self.timer.phase("forward"):
                loss = self.trainer.forward(batch)
            with self.timer.phase("backward"):
                self.trainer.backward(loss, len(tokens))
            total += loss.detach()
        with self.timer.phase("optimizer"):
            self.trainer.step()
        self.out.losses.append((total / len(tokens)).item())
        phases = {"data_wait": data_wait, **self.timer.collect()}
        if measured:
            record(self.out, time.perf_counter() - start, cpu_seconds() - cpu, phases)
        self.done += 1


class Interleave(Callback):
    """After bigtrain's warm-up: stop bigtrain's memory measurement, build the bare side and run its
    warm-up; then one measured bare step after each measured bigtrain step (last callback)."""

    def __init__(self, make_bare: Callable[[], BareSide], warmup: int, clock: StepClock, memory: PeakMemory):
        self.make_bare, self.warmup, self.clock, self.memory = make_bare, warmup, clock, memory
        self.bare: BareSide | None = None

    def on_step_end(self, trainer: Trainer, result) -> None:
        if trainer.state.step < self.warmup:
            return
        if self.bare is None:
            self.memory.stop()
            self.bare = self.make_bare()
            for _ in range(self.warmup):
                self.bare.step(measured=False)
        else:
            self.bare.step(measured=True)
        self.clock.restart()


def initial_state(engine) -> dict[str, torch.Tensor]:
    """The engine's weights (gathered under ZeRO-3) as CPU copies, by parameter name."""
    from bigtrain.parallel.dsenv import import_deepspeed

    params = dict(engine.module.named_parameters())
    with import_deepspeed().zero.GatheredParameters(list(params.values())):
        return {name: p.detach().to("cpu", copy=True) for name, p in params.items()}


def run(cfg: Config, world: World, sources: list, warmup: int, peak: Peak, bare_mode: str | None):
    """bigtrain's steps, with the bare side interleaved or after; -> (bigtrain Phase, bare Phase or None)."""
    from bigtrain.parallel.engine import build_engine, release_engine
    from bigtrain.train.faults import HealthCallback, NonFiniteGuard
    from bigtrain.train.metrics import MetricsLogger
    from bigtrain.train.run import build_loader

    if world.is_main:
        Path(cfg.run.dir).mkdir(parents=True, exist_ok=True)  # metrics.jsonl of the bigtrain steps
    engine, _ = build_engine(cfg, world, cfg.model.vocab_size)
    weights = initial_state(engine) if bare_mode else None
    timer, ours = PhaseTimer(world.device), Phase()
    batches = Recorder(build_loader(cfg, world, sources, None))
    accum = cfg.train.global_batch_size // (cfg.train.micro_batch_size * world.dp_size)
    make_bare = lambda: BareSide(cfg, world, weights, batches.seen, accum)  # noqa: E731
    guard = NonFiniteGuard(engine, world.device, check_grads=cfg.train.precision != "fp16")
    clock, memory = StepClock(timer, warmup, ours), PeakMemory(world.device)
    callbacks = [HealthCallback(0, 0.0), MetricsLogger(cfg, peak), clock]
    interleave = Interleave(make_bare, warmup, clock, memory) if bare_mode == "interleaved" else None
    trainer = Trainer(cfg, world, TimedEngine(engine, timer), batches, TrainState(),
                      callbacks + ([interleave] if interleave else []), guard)
    with memory:
        trainer.fit()
    ours.peak_memory_gb, ours.memory_kind = memory.gb, memory.kind
    guard.remove()
    release_engine(engine)
    del engine, trainer, guard
    release_memory(world.device)
    if bare_mode == "sequential":
        return ours, run_sequential(make_bare, cfg.train.steps, warmup, world.device)
    return ours, interleave.bare.out if interleave else None


def run_sequential(make_bare: Callable[[], BareSide], steps: int, warmup: int, device: torch.device) -> Phase:
    with PeakMemory(device) as memory:
        bare = make_bare()
        for step in range(steps):
            bare.step(measured=step >= warmup)
    bare.out.peak_memory_gb, bare.out.memory_kind = memory.gb, memory.kind
    out = bare.out
    del bare
    release_memory(device)
    return out


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench(cfg: Config, world: World, sources: list, steps: int, warmup: int, stated: Peak | None,
          bare_mode: str | None) -> dict:
    """Measure bigtrain and, with TP=1, the bare baseline (``bare_mode``: interleaved, sequential or None)."""
    from bigtrain.bench.report import assemble

    before = measure_ceiling(world, cfg.train.precision)
    run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=warmup + steps))
    ours, bare = run(run_cfg, world, sources, warmup, stated or before, bare_mode if world.tp_size == 1 else None)
    if bare is not None and world.dp_size > 1:
        bare.losses = mean_over_ranks(bare.losses, world)  # bigtrain's loss is the data-parallel mean
    # measured before and after the steps, the better kept: a busy moment (shared CPU) only lowers it
    after = measure_ceiling(world, cfg.train.precision)
    ceiling = max(before, after, key=lambda p: p.flops)
    peak = stated or ceiling
    return assemble(cfg, world, ours, bare, peak, ceiling, steps, warmup, bare_mode)


def mean_over_ranks(values: list[float], world: World) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return (t / world.world_size).tolist()
