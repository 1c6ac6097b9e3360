"""TODO builtins/executors."""
