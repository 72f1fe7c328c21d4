"""Per-GPU memory of Qwen2.5-VL-7B training state on one 8-GPU node, by component and layout.

The FSDP rows are measured from the real sharded plan (`lvr_trainer.parallel.memory.measure_sharded_state`:
the model on the meta device, sharded by `parallel.fsdp` as one rank of an 8-rank fake process group) and
printed next to the arithmetic of `lvr_trainer.plan.state_bytes`; the whole-model row (every rank holding the
full model, the layout `ddp` keeps) is the arithmetic. Activations: checkpointed per decoder layer, bf16,
`checkpointed_activation_bytes` for 256k tokens split over SP 4 (an estimate of the dominant terms).

    python bench/memory_7b.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from lvr_trainer.plan import GIB, ModelCounts, checkpointed_activation_bytes, state_bytes

COMPONENTS = ("weights", "gradients", "optimizer", "reference")


def main() -> None:
    out = subprocess.run([sys.executable, "-m", "lvr_trainer.parallel.memory", "8", "4", "3"], check=True,
                         capture_output=True, text=True).stdout
    real = json.loads(out.strip().splitlines()[-1])
    counts = ModelCounts(real["language"], real["vision"])
    fsdp, whole = state_bytes(counts, 8, sharded=True), state_bytes(counts, 8, sharded=False)
    activations = checkpointed_activation_bytes(256 * 1024 // 4, 3584, 18944, 28)
    print(f"Qwen2.5-VL-7B: language model {counts.language / 1e9:.3f} B parameters (trained, fp32 master), "
          f"vision tower {counts.vision / 1e9:.3f} B (frozen, bf16); 8 GPUs, DP 2 x SP 4; GiB per GPU")
    print(f"| {'component':<24} | {'fsdp, measured plan':>19} | {'fsdp, arithmetic':>16} | {'whole model':>11} |")
    print(f"|{'-' * 26}|{'-' * 21}:|{'-' * 18}:|{'-' * 13}:|")
    for name in COMPONENTS:
        print(f"| {name:<24} | {real[name] / GIB:>19.2f} | {getattr(fsdp, name) / GIB:>16.2f} | "
              f"{getattr(whole, name) / GIB:>11.2f} |")
    measured = sum(real[name] for name in COMPONENTS)
    print(f"| {'state total':<24} | {measured / GIB:>19.2f} | {fsdp.total / GIB:>16.2f} | {whole.total / GIB:>11.2f} |")
    print(f"| {'activations (256k, SP 4)':<24} | {activations / GIB:>19.2f} | {activations / GIB:>16.2f} | "
          f"{activations / GIB:>11.2f} |")
    print(f"| {'sum':<24} | {(measured + activations) / GIB:>19.2f} | {(fsdp.total + activations) / GIB:>16.2f} | "
          f"{(whole.total + activations) / GIB:>11.2f} |")
    print(f"80 GB A100 = {80e9 / GIB:.1f} GiB")


if __name__ == "__main__":
    main()
