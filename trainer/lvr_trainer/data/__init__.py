"""Long-video data: the record schema, frame sampling, validation and the synthetic dataset."""
