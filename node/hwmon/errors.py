"""Exceptions of the hardware monitor."""

from __future__ import annotations

from node.errors import NodeError


class HwmonError(NodeError):
    """Root of the hardware monitor's errors."""


class SensorError(HwmonError, ValueError):
    """A sensor file or tool gave something that is not a valid reading."""


class DeviceMissing(HwmonError, LookupError):
    """A configured device (GPIO library, LED, fan) is not present on this box."""
