"""The config tree (Hydra), shipped inside the package."""
