"""Built-in distillers, each registered through ``register_distillers`` like a plugin."""
