"""Evaluation: distribution metrics over audio embeddings (and, later, embedders, latency, report)."""
