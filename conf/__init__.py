"""amint_pl's configs (Hydra): shipped in the wheel as the package `amint_pl.conf`."""
