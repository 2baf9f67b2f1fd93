"""Retrieval over a sound library: incremental feature index and two-stage search."""
