"""Congestion controllers behind one small interface, chosen by name."""

from node.transport.congestion import newreno, tolerant
from node.transport.congestion.base import (
    CongestionControl,
    available,
    create_congestion_control,
    register_congestion_control,
)

__all__ = [
    "CongestionControl",
    "available",
    "create_congestion_control",
    "newreno",
    "register_congestion_control",
    "tolerant",
]
