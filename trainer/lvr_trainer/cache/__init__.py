"""The shared video-embedding cache (MR-SP stage 1).

keys.py (content-addressed keys), payload.py (safetensors + checksum), store.py (the EmbeddingStore
protocol; a LocalStore, or lvr_trainer.storage's S3Store), local.py, embedding_cache.py (EmbeddingCache:
get-or-encode, counters, failure policy), embedder.py (video file -> cached embeddings, single or parallel).
"""
