"""Rollout engines: generate replies from prompts whose video embeddings come from the cache."""
