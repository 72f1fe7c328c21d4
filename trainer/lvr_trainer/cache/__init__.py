"""The shared video-embedding cache (MR-SP stage 1).

keys.py (content-addressed keys), payload.py (safetensors + checksum), store.py (the EmbeddingStore
protocol), local.py / s3.py (the two stores), front.py (EmbeddingCache: get-or-encode, counters,
failure policy), embedder.py (video file -> cached embeddings, single or parallel).
"""
