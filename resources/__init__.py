"""Dagster resources: storage paths, compute settings and the MLflow registry."""
