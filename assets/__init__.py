"""Dagster assets: thin wrappers that read config, call corpora/ and models/, report metadata."""
