"""Built-in objectives: auxiliary losses attached to any distiller with ``base+name``."""
