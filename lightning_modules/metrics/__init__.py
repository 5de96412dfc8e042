"""Evaluation scores beyond torchmetrics' classifiers: lesion mass of attention maps, Recall@K."""
