"""Built-in executors (``local``, ``ray``, ``slurm``), registered through
``register_executors``; their worker side is ``ddbench.runtime.worker``."""
