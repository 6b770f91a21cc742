"""Fleet tools: SD images, flashing, inventory, enrolling and upgrading boxes over SSH."""

from node import __version__

__all__ = ["__version__"]
