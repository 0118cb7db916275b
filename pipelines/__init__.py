"""Dagster wiring: the code location, jobs and the command line."""
