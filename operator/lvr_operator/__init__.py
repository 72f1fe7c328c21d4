"""LongVideo-RL operator: reconciles LongVideoDataset, SFTJob and RLJob into pods on GPU nodes."""
