"""Ratings from people: the votes database and the rating site (no Dagster here)."""
