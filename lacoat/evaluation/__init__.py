"""Evaluation: the retrieval evaluator, its metrics, the retrieval-examples report and attention maps."""
