"""LongVideo-RL trainer: long-video data, Qwen2.5-VL models, the embedding cache, MR-SP, SFT and GRPO."""

__version__ = "0.1.0"
