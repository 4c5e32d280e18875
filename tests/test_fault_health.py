"""The numerical-fault pieces on their own: skip counters, the stop, loss spikes, the gradient check, the gate."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from bigtrain.train.faults import HealthCallback, NonFiniteGuard
from bigtrain.train.loop import TrainState
from bigtrain.train.step import StepResult


class Run:
    """The slice of a Trainer the callback touches (state, extra_metrics, say, stop)."""

    def __init__(self):
        self.state, self.extra_metrics, self.said = TrainState(), {}, []
        self.world = SimpleNamespace(is_main=True)
        self.stop_reason, self.failed = None, False

    def say(self, message):
        self.said.append(message)

    def stop(self, reason, requeue=False, failed=False):
        self.stop_reason, self.failed = reason, failed

    def step(self, cb, loss, skipped=False, why=None):
        self.state.step += 1
        self.extra_metrics = {}
        cb.on_step_end(self, StepResult(loss, None, 1e-3, 0.0, 0.1, skipped=skipped, nonfinite=why))


def test_counters_and_the_stop_after_n_consecutive_skips():
    run, cb = Run(), HealthCallback(max_consecutive_skips=3, spike_threshold=0)
    cb.on_train_start(run)
    for loss, skipped in [(2.0, False), (math.nan, True), (2.0, False), (math.nan, True), (math.inf, True)]:
        run.step(cb, loss, skipped, "loss" if skipped else None)
    assert (run.state.skipped_steps, run.state.consecutive_skips, run.stop_reason) == (3, 2, None)
    run.step(cb, 1.0, True, "grad")
    assert (run.state.skipped_steps, run.state.consecutive_skips) == (4, 3)
    assert run.failed and run.stop_reason.startswith("train.max_consecutive_skips=3: steps 4-6 all had a non-finite")
    assert "holds the weights of step 3 (the last good update)" in run.stop_reason
    assert any("step 2: non-finite loss, update skipped (1 in a row, 1 in total)" in m for m in run.said)


def test_fp16_loss_scale_skips_are_counted_but_never_stop_the_run():
    run, cb = Run(), HealthCallback(max_consecutive_skips=2, spike_threshold=0)
    cb.on_train_start(run)
    for _ in range(5):
        run.step(cb, 3.0, True, "loss_scale")
    assert (run.state.skipped_steps, run.state.consecutive_skips, run.stop_reason) == (5, 0, None)


def test_loss_spike_is_logged_against_the_running_mean():
    run, cb = Run(), HealthCallback(max_consecutive_skips=0, spike_threshold=2.0)
    cb.on_train_start(run)
    for _ in range(12):
        run.step(cb, 2.0, False)
        assert "loss_spike" not in run.extra_metrics
    run.step(cb, 3.9, False)  # under 2x: no spike
    assert "loss_spike" not in run.extra_metrics
    run.step(cb, 5.0, False)
    assert 2.0 < run.extra_metrics["loss_spike"] < 2.6
    assert "step 14: loss spike: 5.0000 is" in run.said[-1]


def test_first_steps_never_count_as_spikes():
    run, cb = Run(), HealthCallback(max_consecutive_skips=0, spike_threshold=1.5)
    cb.on_train_start(run)
    for loss in (10.0, 1.0, 30.0):  # the running mean needs 10 losses first
        run.step(cb, loss, False)
    assert not run.said


def test_gradient_hooks_flag_a_non_finite_local_gradient():
    model = torch.nn.Linear(4, 2)
    guard = NonFiniteGuard(SimpleNamespace(module=model), torch.device("cpu"))
    guard.begin_step(1)
    model(torch.ones(1, 4)).sum().backward()
    assert not guard.bad_grad.item()
    guard.begin_step(2)
    (model(torch.ones(1, 4)) * torch.tensor([1.0, math.inf])).sum().backward()
    assert guard.bad_grad.item()
    guard.begin_step(3)  # a new step starts clean
    assert not guard.bad_grad.item()
    guard.remove()


def test_gate_shuts_the_optimizer_and_the_lr_schedule_for_one_step_only():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    guard = NonFiniteGuard(SimpleNamespace(module=model, basic_optimizer=opt, lr_scheduler=sched),
                           torch.device("cpu"), check_grads=False)
    model(torch.ones(1, 4)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with guard.gate(skip=True):
        opt.step()
        sched.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.state == {} and sched.last_epoch == 0 and opt.param_groups[0]["lr"] == 0.1
    with guard.gate(skip=False):
        opt.step()
        sched.step()
    assert not torch.equal(before[0], model.weight) and sched.last_epoch == 1
    assert getattr(opt.step, "_wrapped_by_lr_sched", False)  # torch's own wrapper is back in place
