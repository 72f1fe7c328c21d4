"""Child processes that cannot outlive the cluster: own process group, a pid file, group-wide kill.

Every process we start (control plane, pods' containers) gets its own session, so one `killpg` ends it
and everything it forked (torchrun's workers, a shell's children). Each group id is also written to a
pid file under the cluster's state directory, so `cluster-down` from another shell, or the next start
after a crash, can still find and end them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL the child if the thread that spawned it dies (pytest killed -9)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the pid files and atexit hooks still clean up


MARKER_ENV = "LVR_LOCALCLUSTER"


def spawn(argv: list[str], *, log_path: Path, env: dict[str, str] | None = None, cwd: str | Path | None = None,
          pid_dir: Path | None = None, marker: str = "", name: str | None = None) -> subprocess.Popen:
    """Start `argv` in a new session, stdout+stderr appended to `log_path`; record its pgid in `pid_dir`.

    `marker` goes into the child's environment (LVR_LOCALCLUSTER) and its pid file, so that a later
    `kill_recorded` ends only processes this cluster started, even if a pid was reused since.
    """
    env = dict(os.environ if env is None else env)
    env[MARKER_ENV] = marker
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent)
    if pid_dir is not None:
        pid_dir.mkdir(parents=True, exist_ok=True)
        (pid_dir / f"{name or Path(argv[0]).name}.{proc.pid}.pid").write_text(f"{proc.pid} {marker}\n")
    return proc


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists (zombies of our own children count until reaped)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(pgid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the whole group and every descendant of it (a container's cgroup: torchrun, for one, starts
    its workers in sessions of their own), wait up to `grace` seconds, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        tree = process_tree(pgid)
        if not tree:
            break
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap our direct child so it stops counting as alive
            if not _any_alive(tree):
                break
            time.sleep(0.05)
        else:
            continue
        break
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def process_tree(pgid: int) -> list[int]:
    """Members of group `pgid` and all their descendants, whatever group or session they moved to."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] in ("Z", "X"):
            continue
        pid = int(stat.parent.name)
        parents[pid], groups[pid] = int(fields[1]), int(fields[2])
    tree = {pid for pid, group in groups.items() if group == pgid}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sorted(tree)


def _any_alive(pids: list[int]) -> bool:
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def kill_recorded(pid_dir: Path, grace: float = 5.0) -> int:
    """End every group recorded in `pid_dir` (left by this or an earlier, crashed, run); return how many."""
    killed = 0
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        pgid_text, _, marker = pid_file.read_text().strip().partition(" ")
        pgid = int(pgid_text) if pgid_text.isdigit() else 0
        if pgid > 1 and group_alive(pgid) and _has_marker(pgid, marker):
            kill_group(pgid, grace)
            killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


def _group_members(pgid: int) -> list[int]:
    """Pids whose process group is `pgid` (the leader may be gone while its children live on)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _has_marker(pgid: int, marker: str) -> bool:
    """True when a member of group `pgid` carries LVR_LOCALCLUSTER=`marker`: we started it, the pgid was
    not reused by someone else's process."""
    needle = f"{MARKER_ENV}={marker}".encode()
    for pid in _group_members(pgid):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue  # gone, or not ours to read
    return False


def forget(pid_dir: Path | None, proc: subprocess.Popen) -> None:
    """Drop the pid file of a process that has ended and been reaped."""
    if pid_dir is not None:
        for pid_file in pid_dir.glob(f"*.{proc.pid}.pid"):
            pid_file.unlink(missing_ok=True)
