"""Operator-wide settings (images, timings); one frozen object handed to builders and reconcilers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = "longvideo-rl/trainer:latest"
    rollout_image: str = "longvideo-rl/rollout:latest"   # vLLM + lvr: the vllm rollout sidecar's default
    native_sidecars: bool = False      # Kubernetes >= 1.29: the sidecar is an init container, restartPolicy Always
    resync_seconds: float = 10.0       # periodic reconcile of every object (deadlines, backoff timers)
    master_port: int = 29500           # torchrun rendezvous port on rank 0
    log_lines: int = 20                # last log lines quoted in a Failed message
    # read custom resources, pods and children from the watch-fed cache (cache.py); False: from the API
    # server on every reconcile (and no watch of the children). Env LVR_WATCH_CACHE=0 turns it off.
    watch_cache: bool = True

    @classmethod
    def from_env(cls) -> OperatorSettings:
        import os

        return cls(trainer_image=os.environ.get("LVR_TRAINER_IMAGE", cls.trainer_image),
                   rollout_image=os.environ.get("LVR_ROLLOUT_IMAGE", cls.rollout_image),
                   resync_seconds=float(os.environ.get("LVR_RESYNC_SECONDS", cls.resync_seconds)),
                   watch_cache=os.environ.get("LVR_WATCH_CACHE", "1") != "0")
