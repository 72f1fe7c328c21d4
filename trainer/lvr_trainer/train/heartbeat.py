"""Where every rank is, so that a collective that times out names the rank that stalled and its phase.

Each rank writes (step, phase, wall time) to the process group's key-value store (torchrun's TCPStore) as it
enters a phase; a rank whose collective times out reads everyone's entry and says who is behind: "rank 1 is
behind: still in 'features' of step 3 (entered 47 s ago) while rank 0 waits in 'update'". One small store
write per phase, nothing per token. Without torch.distributed (one process) everything here is a no-op.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from functools import lru_cache

_KEY = "lvr/heartbeat/{}"
_last_step, _seq = 0, 0


@lru_cache(maxsize=1)
def _me() -> tuple[str, str]:
    host = socket.gethostname()
    try:
        return host, socket.gethostbyname(host)
    except OSError:
        return host, ""


@dataclass(frozen=True)
class Beat:
    """Rank `rank` entered `phase`, the `seq`-th phase of `step`, at wall time `at`. Every rank goes through
    the same phases in the same order, so (step, seq) orders them (wall clocks would not: a fast phase is
    left before a slower rank has even entered it)."""

    rank: int
    step: int
    seq: int
    phase: str
    at: float
    host: str = ""          # hostname (the pod's) and its address, to name a rank that vanished
    ip: str = ""


def _store_and_world():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None, 1, 0
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store(), dist.get_world_size(), dist.get_rank()
    except (RuntimeError, ImportError):
        return None, dist.get_world_size(), dist.get_rank()


def publish(phase: str, step: int | None = None) -> None:
    """This rank enters `phase` (of `step`, or of the last step published)."""
    global _last_step, _seq
    if step is not None and step != _last_step:
        _last_step, _seq = step, 0
    _seq += 1
    store, _, rank = _store_and_world()
    if store is None:
        return
    try:
        store.set(_KEY.format(rank), json.dumps([_last_step, _seq, phase, time.time(), *_me()]))
    except RuntimeError:        # the store itself is gone (rank 0's node died): the timeout says enough
        pass


def read_all() -> tuple[list[Beat | None], int]:
    """(every rank's last beat, None where a rank never published), and this rank."""
    store, world, me = _store_and_world()
    if store is None:
        return [], me
    beats: list[Beat | None] = []
    for r in range(world):
        try:
            raw = store.get(_KEY.format(r)) if store.check([_KEY.format(r)]) else None
        except RuntimeError:
            raw = None
        beats.append(Beat(r, *json.loads(raw)) if raw else None)
    return beats, me


def describe(beats: list[Beat | None], me: int, now: float) -> str:
    """Which ranks are behind `me` (an earlier step, or an earlier phase of the same step), or silent; pure,
    for the timeout message."""
    if not beats:
        return ""
    mine = beats[me] if me < len(beats) else None
    silent = [b_rank for b_rank, b in enumerate(beats) if b is None]
    known = [b for b in beats if b is not None]
    where = lambda b: (f"'{b.phase}' of step {b.step} (entered {now - b.at:.0f} s ago"  # noqa: E731
                       + (f", on {b.host}" if b.host else "") + ")")
    if mine is not None:
        behind = [b for b in known if (b.step, b.seq) < (mine.step, mine.seq)]
    else:
        behind = []
    parts = []
    if behind:
        parts += [f"rank {b.rank} is behind: still in {where(b)}" for b in sorted(behind, key=lambda b: (b.step, b.seq))]
        parts.append(f"while rank {me} waits in {where(mine)}")
    elif known and len({(b.step, b.seq) for b in known}) == 1:
        b = known[0]
        parts.append(f"every rank that reported is in '{b.phase}' of step {b.step}: a rank died or hangs inside "
                     "that phase's collective")
    else:
        parts += [f"rank {b.rank}: {where(b)}" for b in known]
    if silent:
        parts.append(f"rank(s) {', '.join(map(str, silent))} never reported (died or stuck at start-up)")
    return "; ".join(parts)


def lost_peer(beats: list[Beat | None], error: str) -> str:
    """The rank a socket error names by address (gloo: `... [127.0.0.5]:41234`), as 'rank 1 (on host)', or ''."""
    addresses = set(re.findall(r"\[([0-9a-fA-F.:]+)\]:\d+", error))
    named = [b for b in beats if b is not None and b.ip and b.ip in addresses]
    return ", ".join(f"rank {b.rank}" + (f" (on {b.host})" if b.host else "") for b in named)


def report(error: str = "") -> str:
    """`describe` for this process's group, now ('' without torch.distributed); with a socket `error`,
    first the rank it names."""
    beats, me = read_all()
    text = describe(beats, me, time.time())
    peer = lost_peer(beats, error) if error else ""
    return f"the lost peer is {peer}; {text}" if peer else text
