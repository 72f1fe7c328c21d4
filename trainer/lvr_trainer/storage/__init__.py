"""The bottom layer: object storage (S3/MinIO buckets) and its errors, torch-free.

errors.py (StoreError, StoreUnavailable), naming.py (where a content key lives in a store), s3.py (S3Store:
the one S3 client, with hard timeouts; credentials from the environment or a mounted Secret). The embedding
cache, datasets, models, checkpoints and the CLI all store through it; it imports nothing of theirs.
"""
