"""lacoat: language-based audio retrieval with co-attention networks."""

__version__ = "0.1.0"
