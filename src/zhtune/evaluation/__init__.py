"""Metrics, calibration, robustness, comparison and reports."""
