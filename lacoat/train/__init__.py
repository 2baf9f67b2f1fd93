"""Training: the LightningModule, its objectives and losses, optimisation, resume and feature extraction."""
