"""Stop cleanly on SIGTERM / SIGUSR1 / SIGUSR2 (what SLURM sends before a time limit or on preemption),
on SIGINT (Ctrl-C), and when the launcher that started the ranks is gone.

The handler only sets a flag. Each step the ranks agree on whether any of them was signalled (a
``stop_signal`` slot, max over ranks, in the step's one agreement: agreement.py), so every rank
stops after the *same* step; the loop then ends, the checkpoint
callback saves, and the process exits with :data:`REQUEUE_EXIT_CODE` so a launcher knows to
requeue. Further signals during the save are recorded but change nothing.

SIGINT: a terminal's Ctrl-C reaches the launcher and every rank at once, and torchrun forwards it
again, so a second SIGINT within :data:`ABORT_AFTER_S` seconds is the same keypress; a later one
aborts without saving (KeyboardInterrupt, exit 130).

Launcher gone: DeepSpeed's ``deepspeed`` runner (deepspeed/launcher/runner.py) starts its per-node
``deepspeed.launcher.launch`` as a child and installs no signal handler for a local run, so
``kill RUNNER_PID`` ends the runner alone and the ranks would train on, orphaned. Every rank
therefore watches its launcher processes (torchrun, deepspeed's runner and launch.py among its
ancestors) and treats the death of any of them like SIGTERM: save and exit 75.
"""

from __future__ import annotations

import signal
import sys
import time

import psutil

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure; retry later"
# SIGUSR1: slurm/pretrain.sh's --signal; SIGUSR2: submitit's (bigtrain/launch/job.py hands it back to submitit)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
ABORT_AFTER_S = 5.0  # a SIGINT this long after the first one is a second Ctrl-C: abort without saving
LAUNCHERS = ("torch.distributed.run", "torchrun", "deepspeed.launcher", "bin/deepspeed")  # in a cmdline


def launcher_processes() -> list[psutil.Process]:
    """This rank's ancestors that are launchers (torchrun; deepspeed's runner and launch.py), nearest first.

    srun's slurmstepd and submitit are not watched: SLURM signals the ranks itself."""
    found = []
    try:
        for proc in psutil.Process().parents():
            cmdline = " ".join(proc.cmdline())
            if not any(name in cmdline for name in LAUNCHERS):
                break
            found.append(proc)
    except psutil.Error:  # an ancestor exited or is not ours to read: watch what was found
        pass
    return found


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie (an exited launcher whose parent has not reaped it yet)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class SignalStop(Callback):
    def __init__(self, signals=(*STOP_SIGNALS, signal.SIGINT)):
        self.signals = signals
        self.received: list[str] = []
        self.previous = {}
        self.first_sigint: float | None = None
        self.launchers: list[psutil.Process] = []
        self.launcher_exited = False
        self.is_main = False

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupt()
        self.received.append(signal.Signals(signum).name)

    def _interrupt(self) -> None:
        now = time.monotonic()
        if self.first_sigint is None:
            self.first_sigint = now
            if self.is_main:
                print(f"SIGINT: saving a checkpoint after this step, then stopping (exit {REQUEUE_EXIT_CODE}); "
                      f"Ctrl-C again after {ABORT_AFTER_S:.0f} s aborts without saving", file=sys.stderr, flush=True)
        elif now - self.first_sigint > ABORT_AFTER_S:
            raise KeyboardInterrupt

    def on_train_start(self, trainer: Trainer) -> None:
        self.is_main = trainer.world.is_main
        self.launchers = launcher_processes()
        trainer.agreement.add("stop_signal", "max", source=lambda: 1.0 if self.stop_requested() else 0.0)
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self._handle)

    def stop_requested(self) -> bool:
        """This rank's vote in the step's agreement: a signal arrived, or a launcher process is gone."""
        self.launcher_exited = self.launcher_exited or any(not alive(proc) for proc in self.launchers)
        return bool(self.received) or self.launcher_exited

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.agreed.get("stop_signal") and trainer.stop_reason is None:
            reasons = [f"received {','.join(sorted(set(self.received)))}"] if self.received else []
            reasons += ["the launcher (torchrun/deepspeed) exited"] if self.launcher_exited else []
            trainer.stop("; ".join(reasons) or "received a signal on another rank", requeue=True)

    def on_train_end(self, trainer: Trainer) -> None:
        pass  # handlers stay installed until exit: a late signal must not kill a final save

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """Once a rank's work is saved and it is about to exit, a late SIGTERM must not change its status.

    Python resets its own handlers to the default (terminate) while the interpreter shuts down, so
    torchrun's SIGTERM to the ranks still exiting (sent as soon as the first rank exits non-zero,
    e.g. with 75) would turn their status into -15. ``SIG_IGN`` survives the shutdown.
    """
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
