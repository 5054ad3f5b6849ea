"""node package (see its modules)."""
