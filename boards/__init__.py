"""boards (see README)."""
