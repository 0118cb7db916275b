"""Ratings from people: the votes database and the rating site (no Dagster here)."""

DEFAULT_PORT = 8090  # where `atelier gallery` serves the site and its rating pages
