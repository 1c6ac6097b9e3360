"""TODO builtins/datasets."""
