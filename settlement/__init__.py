"""settlement package (see its modules)."""
