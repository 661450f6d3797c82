"""polyarch runner: leases jobs of its architecture and runs them in clean checkouts."""

from dispatcher import __version__

__all__ = ["__version__"]
