"""One metrics accumulator per run: namespaced keys, weighted means, cleared at each log step; written
to a JSONL file, TensorBoard (when enabled) and the progress line."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

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
                 enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
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

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
