"""Training: the aMINT LightningModule (active / passive / off) and its loss weighting."""
