"""ce — the Compositing Engine worker."""
__version__ = "0.1.0"
