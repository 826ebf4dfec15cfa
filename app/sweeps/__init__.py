"""Hyperparameter sweeps: a grid or random search whose trials are ordinary jobs."""
