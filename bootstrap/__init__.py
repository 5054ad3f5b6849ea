"""bootstrap package (see its modules)."""
