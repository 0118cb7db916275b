"""Dagster-free corpus ingest: read, validate, normalize and shard images, MIDI and video."""
