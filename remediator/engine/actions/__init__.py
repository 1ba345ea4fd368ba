"""Actions: one module each, registered by name in :mod:`.registry`."""
