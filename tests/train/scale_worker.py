"""One torchrun worker for tests/train/test_checkpoint_scale.py; writes `rank<N>.json` into --out.

    run      `run_sft` with the config in --config (JSON), --resume optional; records on this rank how
             often an s3:// prefix was downloaded, how often weights were read from a model directory,
             and the run's summary.
    timeout  parallel.timeout_s=2; rank 1 sleeps while rank 0 waits in a world barrier and in a DP-group
             all-reduce; records each wait's seconds and error text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def counting(owner, name: str, calls: list):
    """Wrap `owner.name` so that each call's result is appended to `calls`."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result if isinstance(result, int) else 1)
        return result
    setattr(owner, name, wrapper)


def run(args) -> dict:
    import torch.distributed as dist

    import lvr_trainer.model.loading as loading
    from lvr_trainer.storage.s3 import S3Store
    from lvr_trainer.config import TrainerConfig
    from lvr_trainer.train.sft import run_sft

    downloads, weight_reads = [], []
    counting(S3Store, "download_prefix", downloads)
    counting(loading, "_from_dir", weight_reads)
    cfg = TrainerConfig.model_validate(json.loads(Path(args.config).read_text()))
    summary = run_sft(cfg, resume=args.resume)
    return {"rank": dist.get_rank(), "local_rank": int(os.environ["LOCAL_RANK"]), "downloads": downloads,
            "weight_reads": len(weight_reads), "start_step": summary["start_step"], "steps": summary["steps"],
            "losses": summary["losses"], "staging": os.environ.get("LVR_STAGING_DIR")}


def timeout(args) -> dict:
    from lvr_trainer.config import ParallelConfig
    from lvr_trainer.parallel.collectives import all_reduce_sum, wait_for_all_ranks
    from lvr_trainer.parallel.timeouts import CollectiveTimeout
    from lvr_trainer.parallel.world import setup_grid

    grid = setup_grid(ParallelConfig(timeout_s=2))
    out: dict = {"rank": grid.rank}
    if grid.rank == 1:
        time.sleep(8)
        return out
    for what, fn in (("world", lambda: wait_for_all_ranks("the test's barrier")),
                     ("dp", lambda: all_reduce_sum(1.0, "cpu", grid.dp_group))):
        t0 = time.perf_counter()
        try:
            fn()
            out[what] = {"error": None}
        except CollectiveTimeout as err:
            out[what] = {"error": str(err), "seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("run", "timeout"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--config")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    result = {"run": run, "timeout": timeout}[args.scenario](args)
    Path(args.out, f"rank{result['rank']}.json").write_text(json.dumps(result))
    if args.scenario == "timeout":      # its groups are broken by design: nothing to tear down
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
