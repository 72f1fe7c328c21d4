"""One metrics accumulator per run: namespaced keys, weighted means, cleared at each log step; written
to a JSONL file, TensorBoard (when enabled) and the progress line."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lvr_trainer.layout import checked_step_name
from lvr_trainer.train.pod_progress import PodProgressReporter
from lvr_trainer.utils.progress import Progress


class Metrics:
    def __init__(self):
        self._sum: dict[str, float] = defaultdict(float)
        self._weight: dict[str, float] = defaultdict(float)

    def add(self, key: str, value: float, weight: float = 1.0) -> None:
        self._sum[key] += float(value) * weight
        self._weight[key] += weight

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.add(k, v)

    def pop(self) -> dict[str, float]:
        """Weighted means since the last pop; clears."""
        out = {k: self._sum[k] / self._weight[k] for k in self._sum if self._weight[k]}
        self._sum.clear()
        self._weight.clear()
        return out


class RunLogger:
    """Writes `metrics.jsonl` (+ TensorBoard events under `tb/`) in `out_dir`; rank 0 only."""

    def __init__(self, out_dir: str | Path, total_steps: int, label: str, tensorboard: bool = True,
                 enabled: bool = True, start_step: int = 0, output_uri: str | None = None,
                 initial_weights: str | None = None):
        self.enabled = enabled
        self.output_uri = output_uri or str(out_dir)
        self.reporter = PodProgressReporter.from_env(total_steps) if enabled else None
        if self.reporter is not None and initial_weights:     # the job's status proves what it started from
            self.reporter.facts["initial_weights"] = initial_weights
        self.progress = Progress(total_steps, label, initial=start_step)
        self.tb = None
        if not enabled:
            return
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tb"))

    def log(self, step: int, values: dict[str, float], show: tuple[str, ...] = ()) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        extra = " ".join(f"{k.split('/')[-1]}={values[k]:.4g}" for k in show if k in values)
        self.progress.update(step, extra)
        self._last = (step, values)
        if self.reporter is not None:
            self.reporter.report(step, values, self._checkpoint())

    def _checkpoint(self) -> str | None:
        """Where the newest checkpoint lives, in the output's own terms (local path or s3:// URI)."""
        marker = self.dir / "checkpoints" / "latest"
        if not marker.is_file():
            return None
        try:
            name = checked_step_name(marker.read_text(), str(marker))
        except ValueError:
            return None                 # never reported: resuming says what is wrong with it
        return f"{self.output_uri.rstrip('/')}/checkpoints/{name}"

    def close(self) -> None:
        """Flush; the pod's progress gets a last report naming the final checkpoint."""
        if self.reporter is not None and getattr(self, "_last", None):
            self.reporter.report(*self._last, self._checkpoint(), force=True)
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
