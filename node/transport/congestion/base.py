"""The interface every congestion controller implements, and the registry of them by name.

Controllers count bytes. The connection calls the hooks with keyword arguments once per event
(per ACK frame, not per packet, to keep per-packet work low) and reads ``congestion_window``
and ``pacing_rate`` before it sends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

K_INITIAL_WINDOW = 10  # packets, RFC 9002 section 7.2
K_MINIMUM_WINDOW = 2  # packets, RFC 9002 section 7.2


class CongestionControl(ABC):
    """State of one connection's congestion controller."""

    name: ClassVar[str]

    def __init__(self, *, max_datagram_size: int) -> None:
        self.max_datagram_size = max_datagram_size
        self.congestion_window = K_INITIAL_WINDOW * max_datagram_size
        self.ssthresh: int | None = None

    @property
    def minimum_window(self) -> int:
        return K_MINIMUM_WINDOW * self.max_datagram_size

    def on_packet_sent(self, *, size: int, now: float) -> None:  # noqa: B027
        """A packet that counts towards bytes in flight left."""

    @abstractmethod
    def on_packets_acked(
        self, *, acked_bytes: int, newest_sent_time: float, bytes_in_flight: int, now: float
    ) -> None:
        """One ACK newly acknowledged ``acked_bytes`` of in-flight packets."""

    @abstractmethod
    def on_packets_lost(
        self, *, lost_bytes: int, newest_sent_time: float, bytes_in_flight: int, now: float
    ) -> None:
        """Loss detection declared ``lost_bytes`` of in-flight packets lost."""

    @abstractmethod
    def on_rtt_measurement(
        self, *, latest_rtt: float, min_rtt: float, smoothed_rtt: float, now: float
    ) -> None:
        """A new RTT sample (RFC 9002 section 5)."""

    @abstractmethod
    def on_retransmission_timeout(self, *, now: float) -> None:
        """The retransmission timer fired (RFC 6298 section 5.5)."""

    @abstractmethod
    def pacing_rate(self, smoothed_rtt: float) -> float:
        """Bytes per second the sender may put on the wire."""

    def status(self) -> dict[str, Any]:
        return {"algorithm": self.name, "cwnd": self.congestion_window, "ssthresh": self.ssthresh}


_REGISTRY: dict[str, type[CongestionControl]] = {}


def register_congestion_control(cls: type[CongestionControl]) -> type[CongestionControl]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def create_congestion_control(name: str, *, max_datagram_size: int) -> CongestionControl:
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown congestion control {name!r}; choose one of {', '.join(available())}"
        ) from None
    return cls(max_datagram_size=max_datagram_size)
