"""Models: the audited backbones (every one answers `(logits, taps) = model(x)`) and the MINT head."""
