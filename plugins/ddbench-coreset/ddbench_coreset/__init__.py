"""ddbench-coreset: herding and k-center coreset baselines as a ddbench plugin.

ddbench loads ``ddbench_coreset.plugin`` through the ``ddbench`` entry point; the
selection rules in ``ddbench_coreset.selection`` work on any feature matrix.
"""

from ddbench_coreset.selection import herding, k_center

__all__ = ["herding", "k_center"]
