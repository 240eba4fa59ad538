"""Evaluation: SPEC §3 metrics."""
