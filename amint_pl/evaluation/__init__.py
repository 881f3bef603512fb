"""Evaluation: membership metrics, classic attacks, and the run's report (files, plots, table)."""
