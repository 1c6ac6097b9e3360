"""Datasets as every distiller sees them: the ``DataBundle`` (normalised train/test tensors),
the decoded-dataset cache, normalisation, image decoding, per-class sampling, the data
conditions (``clean``, ``zca``, ``noise:R``, ``imbalance:F``) and released sets read from
files (``released``). The built-in datasets themselves are in ``ddbench.builtins.datasets``.

Imports: the foundation, ``runtime`` and ``storage.atomic`` (cache files are written
atomically); never components, evaluation or anything above.
"""
