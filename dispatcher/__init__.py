"""polyarch dispatcher: the hub that owns state, the wire protocol and the result files."""

__version__ = "0.1.0"
