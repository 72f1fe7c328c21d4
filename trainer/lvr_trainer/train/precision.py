"""`train.precision` on the device: bf16-mixed refused where it has no bf16 kernels, and the autocast the
loops compute under."""

from __future__ import annotations

import torch

from lvr_trainer.config import ConfigError, Precision, TrainerConfig


def check_precision(cfg: TrainerConfig, device: torch.device) -> None:
    """bf16-mixed needs bf16 kernels: any CPU, GPUs from Ampere on."""
    if (cfg.train.precision == Precision.bf16_mixed and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"train.precision bf16-mixed: {torch.cuda.get_device_name(device)} has no bf16 support "
                          "(it needs an Ampere or newer GPU); set train.precision: fp32")


def autocast_for(cfg: TrainerConfig, device: torch.device):
    """bf16 autocast under train.precision bf16-mixed (on CPU as on GPU), a no-op context under fp32.
    The weights it computes with stay float32; see `parallel.data_parallel.wrap_model` for the FSDP side."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == Precision.bf16_mixed)
