"""Defaults shared by training, evaluation and search (a module without imports: the search path
reads it before torch is loaded)."""

RERANK_K = 32  # clips (or queries) the bi-encoder shortlists for co-attention: the paper's K
