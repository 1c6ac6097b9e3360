"""How a synthetic set is judged: the evaluation protocol (``protocol``: parameters, named
and versioned recipes, their hash; ``choose``/``specialise`` apply a registered
``ProtocolSpec``), the one training loop (``training``) that evaluation, teachers and
expert trajectories share, batched evaluation of many networks (``batched``), label modes
(``labels``), teachers (``teacher``), expert trajectories (``experts``), and the DSA and DC
augmentations (``augment``, ``dc_augment``).

Imports: the foundation, ``runtime``, ``storage`` and ``data``; never components, the
registry or anything above (the built-in protocols register from ``ddbench.builtins``).
"""
