"""Where every rank is, so that a collective that times out names the rank that stalled and its phase.

Each rank writes (step, phase, wall time) to the process group's key-value store (torchrun's TCPStore) as it
enters a phase; a rank whose collective times out reads everyone's entry and says who is behind: "rank 1 is
behind: still in 'features' of step 3 (entered 47 s ago) while rank 0 waits in 'update'". One small store
write per phase, nothing per token. Without torch.distributed (one process) everything here is a no-op.

A rank that vanished mid-collective is named by the address in the socket error when there is one, else by
liveness: every rank bumps a counter in the store once a second from a daemon thread, and the ranks whose
counter stops moving are the lost ones (knowable with any error text and any number of ranks).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

_KEY = "lvr/heartbeat/{}"
_ALIVE_KEY = "lvr/alive/{}"
ALIVE_EVERY_S = 1.0
_last_step, _seq = 0, 0
_ticker: threading.Thread | None = None


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
    _start_ticker(store, rank)
    try:
        store.set(_KEY.format(rank), json.dumps([_last_step, _seq, phase, time.time(), *_me()]))
    except RuntimeError:        # the store itself is gone (rank 0's node died): the timeout says enough
        pass


def _start_ticker(store, rank: int) -> None:
    """Once per process: a daemon thread that bumps this rank's liveness counter every ALIVE_EVERY_S."""
    global _ticker
    if _ticker is not None:
        return

    def tick() -> None:
        while True:
            try:
                store.add(_ALIVE_KEY.format(rank), 1)
            except RuntimeError:    # the store is gone: nobody can read the counter any more
                return
            time.sleep(ALIVE_EVERY_S)

    _ticker = threading.Thread(target=tick, name="lvr-liveness", daemon=True)
    _ticker.start()


def _alive_counts(store, world: int) -> list[int | None]:
    out: list[int | None] = []
    for r in range(world):
        try:
            out.append(store.add(_ALIVE_KEY.format(r), 0) if store.check([_ALIVE_KEY.format(r)]) else None)
        except RuntimeError:
            out.append(None)
    return out


def silent_ranks(window_s: float = 3 * ALIVE_EVERY_S) -> list[int]:
    """The other ranks whose liveness counter did not move within `window_s`: their process is gone (or
    frozen). Blocks for `window_s`; [] without torch.distributed or when the store cannot be read."""
    store, world, me = _store_and_world()
    if store is None:
        return []
    before = _alive_counts(store, world)
    time.sleep(window_s)
    after = _alive_counts(store, world)
    if after[me] is None:       # our own counter unreadable: the store is not telling the truth
        return []
    return [r for r in range(world) if r != me and (after[r] is None or after[r] == before[r])]


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


def name_ranks(beats: list[Beat | None], ranks: list[int]) -> str:
    """'rank 1 (on host)' for each of `ranks`, with the host from its last beat when it published one."""
    host = lambda r: beats[r].host if r < len(beats) and beats[r] is not None else ""  # noqa: E731
    return ", ".join(f"rank {r}" + (f" (on {host(r)})" if host(r) else "") for r in ranks)


def report(error: str = "", peer_lost: bool = False) -> str:
    """`describe` for this process's group, now ('' without torch.distributed). When a peer was lost, first
    the rank it was: named by the address in the socket `error`, else by the liveness counters."""
    beats, me = read_all()
    text = describe(beats, me, time.time())
    peer = lost_peer(beats, error) if error else ""
    if peer_lost and not peer:
        peer = name_ranks(beats, silent_ranks())
    return f"the lost peer is {peer}; {text}" if peer else text
