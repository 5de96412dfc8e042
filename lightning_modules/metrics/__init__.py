"""Evaluation scores beyond torchmetrics' classifiers (lesion mass of attention maps, Recall@K, the
scores of one set of predictions) and the gathering of every process's outputs under DDP."""
