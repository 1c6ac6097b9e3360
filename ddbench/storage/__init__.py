"""Everything that persists: the SQLite store and its rows (``store``, ``records``), what a
store path holds before it is opened (``storefile``) and whether a run's process has ended
(``liveness``), synthetic sets on disk (``artifacts``), resumable distillation state
(``checkpoint``), a run as a shareable folder and its import (``share``; ``importing``,
which checks each row as ``rowcheck`` says a run writes it), and files written
atomically with their content hashes (``atomic``, which every other writer uses).

Imports: the foundation (``errors``, ``keys``, ``version``, ``synthetic``) and nothing
above: what storage writes is computed by its callers (an export's statistics are handed
in by the CLI), so a report never has to be imported to store one.
"""
