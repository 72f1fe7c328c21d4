"""Training loops (CoT-SFT, GRPO) and what they share: examples, batches, schedules, checkpoints, logs."""
