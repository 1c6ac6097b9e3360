"""The machine side of a run: device and speed settings (``compiling``: torch.compile for
first-order passes; ``precision``: bf16 autocast; ``allocator``: glibc malloc tuning and
chunk sizes), what a piece of work cost (``cost``), the live progress display
(``progress``), and the worker processes every out-of-process executor starts (``worker``:
the wire format and placement; ``engines``: optional engines, cores, import paths).

Imports: the foundation only (``errors``, ``keys``, ``params``); nothing here knows what a
method, a dataset or a result is.
"""
