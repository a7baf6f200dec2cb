"""sim (see README)."""
