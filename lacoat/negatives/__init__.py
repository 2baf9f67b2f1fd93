"""Negatives: edits of clips (audio), of captions (order, counts) and the kinds training can draw."""
