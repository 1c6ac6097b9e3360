"""Datasets: the DataBundle every distiller sees, the built-in loaders and their cache."""
