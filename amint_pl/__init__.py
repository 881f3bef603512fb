"""amint_pl: Active Membership Inference Test (aMINT) as a Lightning + Hydra experiment framework."""

__version__ = "0.1.0"
