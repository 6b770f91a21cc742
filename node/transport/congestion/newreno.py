"""NewReno (RFC 9002 section 7 / RFC 6582), for comparison with the tolerant controller."""

from __future__ import annotations

from node.transport.congestion.base import CongestionControl, register_congestion_control

K_LOSS_REDUCTION_FACTOR = 0.5  # RFC 9002 section 7.3.2
K_PACING_GAIN = 1.25


@register_congestion_control
class NewReno(CongestionControl):
    name = "newreno"

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._recovery_start = float("-inf")
        self._acked_in_ca = 0

    def on_packets_acked(
        self, *, acked_bytes: int, newest_sent_time: float, bytes_in_flight: int, now: float
    ) -> None:
        if newest_sent_time <= self._recovery_start:
            return
        if self.ssthresh is None or self.congestion_window < self.ssthresh:
            self.congestion_window += acked_bytes
            return
        # Congestion avoidance: one datagram per window of acknowledged bytes.
        self._acked_in_ca += acked_bytes
        if self._acked_in_ca >= self.congestion_window:
            self._acked_in_ca -= self.congestion_window
            self.congestion_window += self.max_datagram_size

    def on_packets_lost(
        self, *, lost_bytes: int, newest_sent_time: float, bytes_in_flight: int, now: float
    ) -> None:
        if newest_sent_time <= self._recovery_start:
            return
        self._recovery_start = now
        self.congestion_window = max(
            int(self.congestion_window * K_LOSS_REDUCTION_FACTOR), self.minimum_window
        )
        self.ssthresh = self.congestion_window

    def on_rtt_measurement(
        self, *, latest_rtt: float, min_rtt: float, smoothed_rtt: float, now: float
    ) -> None:
        pass

    def on_retransmission_timeout(self, *, now: float) -> None:
        self.ssthresh = max(self.congestion_window // 2, self.minimum_window)
        self.congestion_window = self.minimum_window
        self._recovery_start = now

    def pacing_rate(self, smoothed_rtt: float) -> float:
        return K_PACING_GAIN * self.congestion_window / max(smoothed_rtt, 1e-3)
