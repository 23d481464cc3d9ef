"""The package's version (recorded with every sweep and exported config)."""

__version__ = "0.1.0"
