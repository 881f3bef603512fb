"""Data: benchmark readers, membership splits, the Lightning DataModule and batched transforms."""
