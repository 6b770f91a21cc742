"""Relays: the home box's manager for enrolled MicroPython relay boards."""

from node.relays.service import Allocation, Enrollment, RelayError, RelaysService

__all__ = ["Allocation", "Enrollment", "RelayError", "RelaysService"]
