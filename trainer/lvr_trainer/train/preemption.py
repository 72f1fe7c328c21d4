"""Preemption is not failure: SIGTERM (a pod deleted, preempted, evicted, drained) stops the run at the next
step boundary with a checkpoint, and the process exits with `EXIT_PREEMPTED` and a termination message the
operator recognises (`PREEMPTED_MARK`), so the gang restarts from that checkpoint without charging
`runPolicy.backoffLimit`.

Every rank of the job must take the same decision at the same step (the checkpoint is collective), but
SIGTERM may reach only some of them (one pod of a gang deleted), so the flag is OR-ed over all ranks at each
step boundary: one scalar all-reduce per step. The time left is the pod's terminationGracePeriodSeconds
(and, under torchrun, its own 30 s before it kills the workers it signalled): a step plus a checkpoint must
fit in it, or the run resumes from the checkpoint before.
"""

from __future__ import annotations

import signal
import threading

from lvr_trainer.contracts.exits import PREEMPTED_MARK


class Preempted(Exception):
    """The run stopped on SIGTERM after saving `checkpoint` at `step`."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"{PREEMPTED_MARK}: stopped on SIGTERM at step {step}; checkpoint {checkpoint or '(none)'} "
                         "saved; the job resumes from it")


class StopOnSigterm:
    """`with StopOnSigterm() as stop:` ... `if stop.requested(grid):` at each step boundary."""

    def __init__(self):
        self.signalled = False
        self._previous = None

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():    # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if not self.signalled:
            print("lvr: SIGTERM received: stopping after this step with a checkpoint", flush=True)
        self.signalled = True

    def requested(self, grid) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it at the same step boundary)."""
        import torch
        import torch.distributed as dist

        if grid.layout.world_size == 1 or not dist.is_initialized():
            return self.signalled
        from lvr_trainer.parallel import collectives

        flag = torch.tensor([1.0 if self.signalled else 0.0], device=grid.device)
        collectives.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
