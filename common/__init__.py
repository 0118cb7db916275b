"""What every layer uses and no layer owns: atomic writes and content hashes (no Dagster, no torch)."""
