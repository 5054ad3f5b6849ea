"""market package (see its modules)."""
