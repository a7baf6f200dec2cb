"""rtl_gen (see README)."""
