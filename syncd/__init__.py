"""syncd: a drop-folder sync daemon."""

__version__ = "0.1.0"
