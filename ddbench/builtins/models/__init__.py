"""Architectures for distillation and evaluation, registered through ``register_models``."""
