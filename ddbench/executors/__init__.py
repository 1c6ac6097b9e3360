"""Executors run the jobs of a sweep; the driver alone writes results."""
