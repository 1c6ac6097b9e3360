"""TODO builtins."""
