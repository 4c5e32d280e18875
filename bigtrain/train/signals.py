"""Stop cleanly on SIGTERM / SIGUSR1 / SIGUSR2 (what SLURM sends before a time limit or on preemption).

The handler only sets a flag. Each step the ranks agree on whether any of them was signalled (a
``stop_signal`` slot, max over ranks, in the step's one agreement: agreement.py), so every rank
stops after the *same* step; the loop then ends, the checkpoint
callback saves, and the process exits with :data:`REQUEUE_EXIT_CODE` so a launcher knows to
requeue. Further signals during the save are recorded but change nothing.
"""

from __future__ import annotations

import signal

from bigtrain.train.loop import Callback, Trainer
from bigtrain.train.step import StepResult

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure; retry later"
# SIGUSR1: slurm/pretrain.sh's --signal; SIGUSR2: submitit's (bigtrain/launch/job.py hands it back to submitit)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class SignalStop(Callback):
    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.received: list[str] = []
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        self.received.append(signal.Signals(signum).name)

    def on_train_start(self, trainer: Trainer) -> None:
        trainer.agreement.add("stop_signal", "max", source=lambda: 1.0 if self.received else 0.0)
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.agreed.get("stop_signal") and trainer.stop_reason is None:
            names = ",".join(sorted(set(self.received))) or "a signal on another rank"
            trainer.stop(f"received {names}", requeue=True)

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
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
