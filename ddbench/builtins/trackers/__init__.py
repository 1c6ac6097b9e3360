"""Experiment trackers: MLflow and Weights & Biases (``--track mlflow,wandb``), registered
through ``register_trackers`` like any plugin's. Each imports its library only when a run
enables it, so a missing library is one error naming the extra that installs it.
"""
