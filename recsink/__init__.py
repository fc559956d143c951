"""recsink: a call-recording sink that stores every recording durably, exactly once."""

__version__ = "0.1.0"
