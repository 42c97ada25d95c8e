"""Metric plugins: torchmetrics objects with declared direction, comparison and input range."""
