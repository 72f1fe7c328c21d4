"""Qwen2-VL / Qwen2.5-VL: loading, tokenizers, the video processor, prompts, video encoding and splicing.

Import the submodules (`lvr_trainer.model.loading`, `.processor`, `.prompt`, `.encode`); this package
itself imports nothing heavy.
"""
