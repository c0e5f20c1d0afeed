"""Reproducible benchmarks of the recommender: run each from the repository root as `python -m benchmarks.<name>`."""
