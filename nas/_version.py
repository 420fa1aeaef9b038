"""The toolkit's version: one place (setup.cfg reads it), a leaf module that imports nothing."""

__version__ = "0.1.0"
