"""Models: encoders, co-attention units and cascades, pooling, the matcher (plain ``nn.Module`` code)."""
