"""Reward curves of an `lvr rl` run from its metrics.jsonl (`python -m lvr_trainer.train.rl_plot RUN_DIR`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

CURVES = (("reward/total", "reward (total)"), ("rollout/accuracy", "rollout accuracy"),
          ("rollout/format_rate", "format rate"), ("val/accuracy", "held-out strict accuracy (greedy)"))


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of metrics.jsonl; a resumed run's repeated steps keep their last value."""
    rows: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = {**rows.get(row["step"], {}), **row}
    return [rows[s] for s in sorted(rows)]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over up to `window` points."""
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def plot_rewards(metrics_path: str | Path, png: str | Path, title: str = "GRPO", window: int = 10) -> Path:
    """PNG of reward, rollout accuracy and format rate per step (smoothed), and validation accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label in CURVES:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        steps, values = zip(*pts)
        if key.startswith("val/"):
            ax.plot(steps, values, marker="o", color="black", label=label)
        else:
            ax.plot(steps, smooth(list(values), window), label=f"{label} ({window}-step mean)")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


if __name__ == "__main__":
    run = Path(sys.argv[1])
    print(plot_rewards(run / "metrics.jsonl", sys.argv[2] if len(sys.argv) > 2 else run / "rewards.png"))
