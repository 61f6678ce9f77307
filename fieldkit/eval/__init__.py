"""Evaluation: sample grids, metrics and the results table."""
