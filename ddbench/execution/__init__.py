"""TODO execution."""
