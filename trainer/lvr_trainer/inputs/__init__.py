"""What the model reads, built from dataset records: each video's features (cached embeddings, or frames to
encode) and the tokenized examples and rollout requests around them. Shared by training, evaluation and
rollouts; above data, model and cache, below train and eval.
"""
