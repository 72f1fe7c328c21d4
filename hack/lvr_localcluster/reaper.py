"""Watchdog that ends a cluster's processes when the process that owns the cluster dies without cleanup.

PR_SET_PDEATHSIG only reaches direct children; a container's own children (torchrun workers, `sh -c`
jobs) would outlive a `kill -9` of pytest. This tiny process, started by LocalCluster in its own session,
polls its parent; once the parent is gone (it is re-parented), it ends every process group recorded in
the cluster's pid directory. `LocalCluster.stop()` terminates it after a normal shutdown.

    python -m lvr_localcluster.reaper PID_DIR
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lvr_localcluster.procs import kill_recorded

POLL_SECONDS = 0.5


def main(pid_dir: Path) -> int:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    kill_recorded(pid_dir, grace=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
