"""What a failed collective means, said to the user: one that waited past `parallel.timeout_s`, or one whose
peer vanished, becomes a CollectiveTimeout naming the setting, where each rank is (`heartbeat`), and what
to do."""

from __future__ import annotations

import contextlib
import re

import torch.distributed as dist

from lvr_trainer.parallel import heartbeat

# parallel.timeout_s of this process's groups (set by world.setup_grid), quoted when a collective times out.
_timeout_s: float | None = None


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than `parallel.timeout_s` for the other ranks."""


def remember_timeout(timeout_s: float) -> None:
    """The timeout the process groups were given, for `explain_timeout`'s messages."""
    global _timeout_s
    _timeout_s = timeout_s


_TIMEOUT_TEXT = re.compile(r"timed out|timing out|timeout", re.IGNORECASE)
_BACKEND_TEXT = ("gloo", "NCCL", "c10d", "ProcessGroup")


_PEER_LOST_TEXT = re.compile(r"connection closed by peer|connection reset by peer|broken pipe|"
                             r"connection refused", re.IGNORECASE)


def _from_torch_distributed(err: BaseException) -> bool:
    return isinstance(err, dist.DistError) or any(s in str(err) for s in _BACKEND_TEXT)


def _is_peer_lost(err: BaseException) -> bool:
    """A collective that failed because another rank's process is gone (gloo's socket errors)."""
    return _from_torch_distributed(err) and bool(_PEER_LOST_TEXT.search(str(err)))


def _is_collective_timeout(err: BaseException) -> bool:
    """A timeout raised by torch.distributed (gloo's `Timed out waiting ...ms`, NCCL's watchdog, the
    store), not any error that mentions a timeout (an S3 request's, say)."""
    return _from_torch_distributed(err) and bool(_TIMEOUT_TEXT.search(str(err)))


@contextlib.contextmanager
def explain_timeout(what: str):
    """`with explain_timeout("checkpoint save"):` turns a collective's timeout inside into a
    CollectiveTimeout that names `parallel.timeout_s` and says what to do; other errors pass unchanged.
    (Under NCCL a timed-out collective is usually ended by torch's watchdog, which aborts the process
    and logs `Timeout(ms)=...`; only errors that reach Python can be explained here.)"""
    try:
        yield
    except RuntimeError as err:
        peer_lost = _is_peer_lost(err)
        if isinstance(err, CollectiveTimeout) or not (peer_lost or _is_collective_timeout(err)):
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        where = heartbeat.report(str(err), peer_lost)      # read from the store only for a collective's failure
        where = f" Where the ranks are: {where}." if where else ""
        if peer_lost:
            raise CollectiveTimeout(
                f"{what}: rank {rank} lost another rank mid-collective (its process or pod is gone).{where} The "
                f"gang restarts from its last checkpoint. ({type(err).__name__}: {str(err)[:300]})") from err
        limit = f"{_timeout_s:g} s" if _timeout_s is not None else "its default"
        raise CollectiveTimeout(
            f"{what}: rank {rank} waited longer than parallel.timeout_s ({limit}) for the other ranks.{where} "
            "Look for the first error in the behind rank's log (a crash, a video that takes minutes to decode, an "
            "S3 or disk stall); if the wait is expected (a long checkpoint write or download), raise "
            f"parallel.timeout_s in the config. ({type(err).__name__}: {str(err)[:300]})") from err
