"""Dagster-free model library: the shared trainer, one module per family, metrics, pyfunc wrappers."""
