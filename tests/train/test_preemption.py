"""SIGTERM is a preemption, not a failure: the trainer checkpoints at the next step boundary, exits with
EXIT_PREEMPTED and a termination message the operator recognises, and `--resume` continues from exactly
that checkpoint. Under torchrun a signal that reaches one rank stops every rank at the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lvr_trainer.contracts.exits import EXIT_PREEMPTED, PREEMPTED_MARK


def _config(make_config, tmp_path, **train):
    cfg = make_config(train={"steps": 400, "batch_size": 1, "save_every": 0, "log_every": 1,
                                                  "torch_threads": 1, **train})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    return cfg, path


def _steps_logged(run_dir: Path) -> int:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return 0
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def _wait_for_step(proc, run_dir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _steps_logged(run_dir) < step:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not reach the step"
        time.sleep(0.2)


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


def test_sigterm_checkpoints_and_resume_continues_from_it(make_config, tmp_path):
    cfg, path = _config(make_config, tmp_path)
    run_dir = Path(cfg.output.dir)
    term = tmp_path / "termination-log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LVR_TERMINATION_LOG": str(term)}
    proc = subprocess.Popen([sys.executable, "-m", "lvr_trainer.cli", "sft", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_step(proc, run_dir, 2)
        assert _checkpoints(run_dir) == []                      # save_every 0: nothing saved before the signal
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    (ckpt,) = _checkpoints(run_dir)                             # exactly one: the one SIGTERM asked for
    stopped = int(ckpt.split("-")[1])
    assert 2 <= stopped < 400 and _steps_logged(run_dir) == stopped
    message = term.read_text()
    assert message.startswith(PREEMPTED_MARK) and f"step {stopped}" in message and ckpt in message

    from lvr_trainer.train.sft import run_sft

    summary = run_sft(cfg, resume=True, stop_after=1)     # `--resume` starts at the SIGTERM checkpoint
    assert summary["start_step"] == stopped and summary["steps"] == stopped + 1


WORKER = r"""
import os, signal, sys, time, threading
from pathlib import Path
from lvr_trainer.cli import main
rank = int(os.environ["RANK"])
if rank == 1:      # only this rank is signalled, once rank 0 has logged step 2
    def later():
        log = Path({run!r}) / "metrics.jsonl"
        while not log.is_file() or len(log.read_text().splitlines()) < 2:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=later, daemon=True).start()
code = main(["sft", "--config", {config!r}])
Path({out!r}, f"exit-{{rank}}").write_text(str(code))
sys.exit(code)
"""


@pytest.mark.distributed
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(make_config, tmp_path):
    cfg, path = _config(make_config, tmp_path)
    run_dir = Path(cfg.output.dir)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(run=str(run_dir), config=str(path), out=str(tmp_path)))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    codes = [int((tmp_path / f"exit-{r}").read_text()) for r in (0, 1)]
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], res.stderr[-3000:]
    (ckpt,) = _checkpoints(run_dir)
    assert int(ckpt.split("-")[1]) == _steps_logged(run_dir) >= 2
