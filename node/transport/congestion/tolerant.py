"""The loss-tolerant controller: Reno probing, Westwood bandwidth, Vegas early detection.

Theory of operation. Wireless and home links drop packets for reasons unrelated to queues, so
a loss alone is weak evidence of congestion; a growing queue is strong evidence, and it shows
as RTT above the path's minimum. Once per round trip the controller computes the Vegas
difference

    diff = min_rtt * (cwnd / min_rtt - cwnd / rtt)        (bytes this flow keeps queued)

with ``rtt`` the smallest sample of the round (scheduling noise only ever adds delay, so the
smallest sample is the one a queue shows in), and compares it with fractions of the
bandwidth-delay product estimated Westwood-style (``bw`` from the rate of acknowledged bytes,
sampled about once per round trip; the largest of the last twenty samples, since random loss
biases a low-pass filtered rate downwards; times ``min_rtt``), each capped at a standing
queue of QUEUE_TARGET (2 ms) so long paths keep short queues too:

    diff < alpha = min(ALPHA * bdp, bw * 1 ms)      probe: slow start doubles, congestion
                                avoidance adds one datagram per round (Reno); after rounds
                                with no queue, up to alpha per round
    alpha..beta                 saturated: hold the window; probe again after a few rounds
    diff > beta = min(BETA * bdp, bw * 2 ms), two rounds running
                                early congestion: drain this flow's queue, not below the bdp

Losses are classified: with a queue confirmed over two rounds a loss is congestion and the
window drops as above (never below half, never more than once per round); without one, the
loss counts towards a loss-rate estimate that is recomputed every ``LOSS_SAMPLE_ACKS`` ACKs.
A round whose loss rate is far above that estimate is congestion on a path too shallow to
build a queue, and backs off by a factor that is gentler the higher the usual random loss
rate is, never below the Westwood estimate times ``min_rtt``. Random loss at the usual rate
does not touch the window; neither does a timeout without a queue (the window restarts from
the estimate). Loss-rate samples during which a queue above beta or a cut showed are left
out: they measure congestion, not the path.

When cuts repeatedly fail to shorten the queue, another flow keeps it full: the controller
then shares until the queue is gone. Each spell of sharing starts in rate mode, as BBR v1
does: pacing at the Westwood maximum times a gain cycled per base RTT (1.25, 0.75, then 1),
loss changing neither rate nor window. With the queue full, the window decides the share:
twice the estimated bdp (BBR's) while this flow delivers between FAIR_SHARE and FAIR_SHARE +
SHARE_MARGIN of the link rate (the largest delivery rate of the last 30 s), more below, less
above. If few of its first rounds lost (the other flow yields on loss, as CUBIC does, and
rate mode would starve it), the controller competes on loss instead as CUBIC does in its
TCP-friendly region (one datagram per round, at most two bdps, x0.7 per loss round, x0.85
per overflow of the shared queue: the round RTT back at the top after the other flow's
back-off had lowered it), from its delivery rate times ``min_rtt``.
Otherwise sending is paced at a gain over ``cwnd / min_rtt``.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any

from node.transport.congestion.base import CongestionControl, register_congestion_control

ALPHA = 0.06  # queued fraction of the bdp below which the window grows
BETA = 0.2  # queued fraction of the bdp above which the window is cut to the bdp
LOSS_SAMPLE_ACKS = 100  # ACKs per loss-rate estimate
LOSS_FILTER = 0.25  # weight of a new loss-rate sample
BW_FILTER = 0.25  # weight of a new bandwidth sample (Westwood+ low-pass filter)
BW_WINDOW = 20  # samples (about one per round trip) the bandwidth maximum is taken over
MIN_RTT_WINDOW = 30.0  # seconds the base RTT is the minimum over
ROUND_RTT_QUANTILE = 0.0  # which sample of a round stands for its RTT (Vegas: the smallest)
MAX_ROUND_SAMPLES = 512
SATURATION_ROUNDS = 4  # rounds held in saturation before probing again
PACING_GAIN_STARTUP = 2.0
PACING_GAIN = 1.2
COMPETE_AFTER = 3  # cuts in a row that did not shorten the queue
RELIEF_ROUNDS = 3  # rounds after a cut at which the queue is compared
QUIET_ROUNDS = 2  # rounds without a queue before probing speeds up
PROBE_BOOST = 8  # ... to this fraction of the window per round
PROBE_BOOST_LONG = 32  # ... at least, when that is more than the grow threshold (long paths)
BURST_LOSS_MARGIN = 0.05  # a round's loss rate this far above the usual one is congestion
BURST_LOSS_PACKETS = 4  # ... provided the round lost at least this many packets
UNKNOWN_LOSS_MARGIN = 0.15  # the margin before the first loss-rate estimate
QUEUE_TARGET = 0.002  # seconds of standing queue the window is cut above (half: grows below)
DELAY_FLOOR = 0.001  # seconds of RTT variation never taken for a queue (scheduling, timers)
COMPETE_BACKOFF = 0.7  # multiplicative decrease on loss while sharing a queue with others
COMPETE_PROBE = 1  # ... and growth: datagrams per round
SHARED_LOSS_MARGIN = 0.01  # round loss above twice the usual rate plus this: congestion (shared)
COMPETE_WINDOW_GAIN = 2.0  # the window never exceeds this many estimated bdps while sharing
RATE_WINDOW_GAIN = 2.0  # the window in rate mode, in estimated bdps (as BBR's) ...
RATE_WINDOW_GAIN_UP = 2.25  # ... while delivering less than FAIR_SHARE of the link rate
RATE_WINDOW_GAIN_DOWN = 1.75  # ... while delivering more than FAIR_SHARE + SHARE_MARGIN
FAIR_SHARE = 0.5  # of the link rate: a fair share against one other flow
SHARE_MARGIN = 0.1
OVERFLOW_BACKOFF = 0.85  # ... and on an overflow without loss (weaker evidence)
MAX_RTT_WINDOW = 10.0  # seconds the shared queue's top (largest round RTT) is taken over
LINK_RATE_WINDOW = 30.0  # seconds the link rate is the largest delivery rate over
RATE_TRIAL_ROUNDS = 24  # rounds of rate mode at the start of each spell of sharing ...
RATE_TRIAL_LOSSY = 14  # ... kept if at least this many of them lost (the other flow ignores loss)
LOSS_DRIVEN_MEMORY = 30.0  # seconds after a failed trial in which sharing starts on loss
RATE_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # pacing gain per base RTT, sharing


def _windowed(
    window: deque[tuple[float, float]], now: float, value: float, seconds: float, *, largest: bool
) -> float:
    """Add ``value`` at ``now`` to ``window`` and return the largest (or smallest) value of
    the last ``seconds``. A monotonic deque: an older value that a newer one beats can
    never be the extreme again, so it is dropped."""
    while window and (window[-1][1] <= value if largest else window[-1][1] >= value):
        window.pop()
    window.append((now, value))
    while now - window[0][0] > seconds:
        window.popleft()
    return window[0][1]


class Phase(Enum):
    SLOW_START = "slow_start"
    PROBING = "probing"
    SATURATED = "saturated"


@register_congestion_control
class Tolerant(CongestionControl):
    name = "tolerant"

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.phase = Phase.SLOW_START
        self.bandwidth = 0.0  # bytes/s
        self.min_rtt = 0.0
        self.smoothed_rtt = 0.0
        self.diff = 0.0
        self.loss_rate = 0.0
        self.congestion_events = 0
        self.cuts: dict[str, int] = {}  # back-offs by cause
        self.random_losses = 0
        self.shared_loss_rounds = 0  # rounds lost in rate mode (no back-off)
        # round state
        self._round_start = -1.0
        self._round_samples: list[float] = []
        self._round_rtts: deque[tuple[float, float]] = deque()
        self._round_acked = 0
        self._round_lost = 0
        self._rounds_saturated = 0
        self._high_rounds = 0
        self._quiet_rounds = 0
        self.competing = False
        self._ineffective_cuts = 0
        self._calm_rounds = 0
        self._rtt_at_cut = 0.0
        self._rounds_since_cut = 0
        self._last_round_rtt = 0.0
        self._max_rtts: deque[tuple[float, float]] = deque()  # (time, round RTT), decreasing
        self._overflow_armed = False
        self._last_cut = float("-inf")
        # rate mode while sharing: the gain cycle
        self._gain_index = 0
        self._gain_start = 0.0
        self.rate_mode = False
        self._trial_rounds = 0
        self._trial_lossy = 0
        self._loss_driven_until = float("-inf")
        # bandwidth sampling
        self._bw_start = -1.0
        self._bw_bytes = 0
        self._bw_samples: deque[float] = deque(maxlen=BW_WINDOW)
        self.max_bandwidth = 0.0
        self._link_rates: deque[tuple[float, float]] = deque()  # (time, rate), decreasing
        self.link_bandwidth = 0.0
        # loss-rate sampling
        self._sample_acks = 0
        self._sample_acked_bytes = 0
        self._sample_lost_bytes = 0
        self._loss_estimated = False
        self._loss_average = 0.0  # exponentially weighted, started from zero ...
        self._loss_weight = 0.0  # ... and the weight its samples have in it so far
        self._sample_queued = False  # a queue or a cut showed during the current sample

    @property
    def bdp(self) -> float:
        return self.max_bandwidth * self.min_rtt

    def _alpha(self) -> float:
        """Queued bytes below which the window grows: a fraction of the estimated bdp, at
        most half the queue target, never under the delay floor."""
        bw = self.bandwidth
        return max(min(ALPHA * self.bdp, bw * QUEUE_TARGET / 2), bw * DELAY_FLOOR)

    def _beta(self) -> float:
        """Queued bytes above which the window is cut: at most QUEUE_TARGET of queue."""
        bw = self.bandwidth
        return max(min(BETA * self.bdp, bw * QUEUE_TARGET), 2 * bw * DELAY_FLOOR)

    def _delay_signal(self) -> bool:
        return self.min_rtt > 0 and self.bdp > 0 and self.diff > self._alpha()

    def on_rtt_measurement(
        self, *, latest_rtt: float, min_rtt: float, smoothed_rtt: float, now: float
    ) -> None:
        self.smoothed_rtt = smoothed_rtt
        if self.min_rtt == 0.0:
            self.min_rtt = latest_rtt
        if len(self._round_samples) < MAX_ROUND_SAMPLES:
            self._round_samples.append(latest_rtt)

    def on_packets_acked(
        self, *, acked_bytes: int, newest_sent_time: float, bytes_in_flight: int, now: float
    ) -> None:
        self._round_acked += acked_bytes
        self._sample_acks += 1
        self._sample_acked_bytes += acked_bytes
        self._sample_bandwidth(acked_bytes, bytes_in_flight, now)
        if self._sample_acks >= LOSS_SAMPLE_ACKS:
            self._update_loss_rate()
        if self._round_start < 0:
            self._round_start = now
        elif self.min_rtt > 0 and now - self._round_start >= max(self.smoothed_rtt, 1e-3):
            self._end_round(now)
        if self.rate_mode:
            self._rate_window(now)
        elif self.phase == Phase.SLOW_START:
            self.congestion_window += acked_bytes
        elif self.phase == Phase.PROBING:
            # Reno congestion avoidance: one datagram per window acknowledged; after
            # rounds with no queue at all, 1/PROBE_BOOST of the window per round instead
            step = self.max_datagram_size
            if self.competing:
                # sharing with loss-driven flows: their growth (CUBIC's TCP-friendly
                # region grows about as Reno does), capped at a few bdps
                step = self.max_datagram_size * COMPETE_PROBE
                if self.bdp > 0 and self.congestion_window > COMPETE_WINDOW_GAIN * self.bdp:
                    step = 0
            elif self._quiet_rounds >= QUIET_ROUNDS:
                # faster, but not much more per round than the queue allowed below alpha,
                # so one round's growth does not jump past the cut threshold
                boost = max(int(self._alpha()), self.congestion_window // PROBE_BOOST_LONG)
                step = max(step, min(self.congestion_window // PROBE_BOOST, boost))
            if step:
                self.congestion_window += max(1, step * acked_bytes // self.congestion_window)

    def _choose_sharing_mode(self, congested: bool, now: float) -> None:
        """Each spell of sharing starts in rate mode (pace at the delivery rate, loss
        ignored). A loss-driven flow (CUBIC) backs off, so the shared queue then
        overflows in few rounds; a flow that ignores loss (BBR v1) keeps it overflowing in
        most. After RATE_TRIAL_ROUNDS, with few lossy rounds the controller shares on loss
        instead (backing off as CUBIC does, which rate mode would starve), and the spells
        of the next LOSS_DRIVEN_MEMORY seconds start so (the other flow's losses drain the
        queue now and then, which ends a spell)."""
        if not self.rate_mode or self._trial_rounds >= RATE_TRIAL_ROUNDS:
            return
        self._trial_rounds += 1
        self._trial_lossy += congested
        if self._trial_rounds == RATE_TRIAL_ROUNDS and self._trial_lossy < RATE_TRIAL_LOSSY:
            self.rate_mode = False
            self._loss_driven_until = now + LOSS_DRIVEN_MEMORY
            # this flow's delivery rate times the base RTT: its share of the pipe without
            # the queue (rate mode took more than its share from a flow that yields on loss)
            share = self.bandwidth * self.min_rtt
            self.congestion_window = max(int(share), self.minimum_window)
            self.ssthresh = self.congestion_window

    def _rate_window(self, now: float) -> None:
        """Sharing a queue another flow keeps full: the pacing gain cycles once per base RTT,
        and the window, about twice the estimated bdp, steers this flow's share: in a full
        drop-tail queue each flow gets the link in proportion to what it keeps in flight,
        and twice the bdp each is a balance that drifts (in the lab, towards BBR: 36-46 %
        for this flow). Below a fair share of the link rate the window is larger, above it
        smaller."""
        if self.min_rtt > 0 and now - self._gain_start >= self.min_rtt:
            self._gain_start = now
            self._gain_index = (self._gain_index + 1) % len(RATE_GAINS)
        if self.bdp > 0:
            gain = RATE_WINDOW_GAIN
            if self.bandwidth < FAIR_SHARE * self.link_bandwidth:
                gain = RATE_WINDOW_GAIN_UP
            elif self.bandwidth > (FAIR_SHARE + SHARE_MARGIN) * self.link_bandwidth:
                gain = RATE_WINDOW_GAIN_DOWN
            self.congestion_window = max(int(gain * self.bdp), self.minimum_window)

    def _sample_bandwidth(self, acked_bytes: int, bytes_in_flight: int, now: float) -> None:
        if self._bw_start < 0:
            self._bw_start = now
            return
        self._bw_bytes += acked_bytes
        interval = now - self._bw_start
        if self.min_rtt <= 0 or interval < max(self.min_rtt, 0.005):
            return
        sample = self._bw_bytes / interval
        app_limited = bytes_in_flight + 2 * self.max_datagram_size < self.congestion_window / 2
        if self.bandwidth == 0.0:
            self.bandwidth = sample
        elif not app_limited or sample > self.bandwidth:
            self.bandwidth += BW_FILTER * (sample - self.bandwidth)
        if not app_limited or sample > self.max_bandwidth:
            self._bw_samples.append(sample)
            self.max_bandwidth = max(self._bw_samples)
            # the link's rate: the largest delivery rate of the last LINK_RATE_WINDOW s
            self.link_bandwidth = _windowed(
                self._link_rates, now, sample, LINK_RATE_WINDOW, largest=True
            )
        self._bw_start = now
        self._bw_bytes = 0

    def _update_loss_rate(self) -> None:
        total = self._sample_acked_bytes + self._sample_lost_bytes
        # only samples that saw no queue (above the cut threshold) and no cut in any of
        # their rounds: flows starting together overflow the queue, drain it, and a sample
        # ending in the quiet after that would take the overflow for the path's random loss
        if total > 0 and not self._delay_signal() and not self._sample_queued:
            self._loss_estimated = True
            sample = self._sample_lost_bytes / total
            self._loss_average += LOSS_FILTER * (sample - self._loss_average)
            self._loss_weight += LOSS_FILTER * (1.0 - self._loss_weight)
            # divided by the weight, the first estimates are not biased towards zero: a
            # path's usual 3 % read as 0.7 % made the next round's random 8 % look like a
            # loss burst, and the window was cut for nothing
            self.loss_rate = self._loss_average / self._loss_weight
        self._sample_acks = 0
        self._sample_acked_bytes = 0
        self._sample_lost_bytes = 0
        self._sample_queued = False

    def _end_round(self, now: float) -> None:
        samples = sorted(self._round_samples)
        # the round's RTT is a low quantile of its samples: stray early or late samples
        # (scheduling noise on either host) move neither it nor the base RTT
        rtt = samples[int(len(samples) * ROUND_RTT_QUANTILE)] if samples else 0.0
        if rtt > 0:
            # base RTT: the smallest round RTT of the last MIN_RTT_WINDOW seconds
            self.min_rtt = _windowed(self._round_rtts, now, rtt, MIN_RTT_WINDOW, largest=False)
            self.diff = self.congestion_window * (1.0 - self.min_rtt / rtt)
        bdp = self.bdp
        high = False
        self._check_competition(rtt, now)
        self._check_overflow(rtt, now)
        if bdp > 0 and self.competing:
            # another flow keeps the queue full: only losses say anything now
            self.phase = Phase.PROBING
        elif bdp > 0:
            high = self.diff > self._beta()
            # a queue must show in two rounds in a row (or be twice the limit) before it
            # counts: one slow round is scheduling noise more often than a real queue
            if high and (self._high_rounds or self.diff > 2 * self._beta()):
                self._cut(now, to_bdp=True, cause="queue")
            elif self.diff > self._alpha() and self.phase != Phase.SLOW_START:
                self.phase = Phase.SATURATED
                self._rounds_saturated += 1
                if self._rounds_saturated >= SATURATION_ROUNDS:
                    self.phase = Phase.PROBING
                    self._rounds_saturated = 0
            elif self.phase == Phase.SATURATED:
                self.phase = Phase.PROBING
                self._rounds_saturated = 0
        self._high_rounds = self._high_rounds + 1 if bdp > 0 and high else 0
        if bdp > 0 and self.diff > self._beta():
            self._sample_queued = True
        quiet = bdp > 0 and self.diff < self._alpha() / 2
        self._quiet_rounds = self._quiet_rounds + 1 if quiet else 0
        total = self._round_acked + self._round_lost
        lost_packets = self._round_lost // self.max_datagram_size
        round_loss = self._round_lost / total if total else 0.0
        if self.competing:
            # sharing the queue: a round losing more than the path's usual random loss is
            # congestion (the random loss itself is not)
            congested = bool(self._round_lost) and (
                round_loss > 2 * self.loss_rate + SHARED_LOSS_MARGIN
            )
            self._choose_sharing_mode(congested, now)
            if not self.rate_mode and self._round_lost and round_loss > 2 * self.loss_rate:
                # sharing on loss: this paced flow sees few of the shared queue's drops, so
                # any loss above the usual rate counts
                self._cut(now, to_bdp=False, cause="loss_shared")
                self._overflow_armed = False  # this cycle's back-off
            elif congested:
                # rate mode: the loss changes neither rate nor window (the other flow
                # ignores it too); counted only
                self.shared_loss_rounds += 1
        elif lost_packets >= BURST_LOSS_PACKETS and not self._delay_signal():
            # until a first loss-rate estimate exists (slow start on a long path) only a
            # far larger burst counts: the path's usual random loss is not known yet
            margin = BURST_LOSS_MARGIN if self._loss_estimated else UNKNOWN_LOSS_MARGIN
            if round_loss > 2 * self.loss_rate + margin:
                self._cut(now, to_bdp=False, cause="loss_burst")
        self._round_start = now
        self._round_samples = []
        self._round_acked = 0
        self._round_lost = 0

    def _check_overflow(self, rtt: float, now: float) -> None:
        """Sharing on loss, a paced flow sees few of the shared queue's drops: the bursty
        loss-driven flow next to it takes most, backs off alone each time, and is pushed
        out. So an overflow counts as a loss round here too: the round RTT back near the
        top of the last MAX_RTT_WINDOW seconds after it had fallen (the other flow's
        back-off drained part of the queue). Once per such cycle, as the other flow."""
        if rtt <= 0:
            return
        top = _windowed(self._max_rtts, now, rtt, MAX_RTT_WINDOW, largest=True)
        if not self.competing or self.rate_mode:
            self._overflow_armed = False
            return
        span = top - self.min_rtt
        if span < 2 * DELAY_FLOOR:
            return
        if rtt < top - span / 2:  # more than this flow's own x0.7 drains
            self._overflow_armed = True
        elif self._overflow_armed and rtt >= top - span / 10:
            self._overflow_armed = False
            self._cut(now, to_bdp=False, cause="overflow_shared", factor=OVERFLOW_BACKOFF)

    def _queue_confirmed(self) -> bool:
        """The last two rounds both showed a queue above the cut threshold, or the last one
        twice that: a loss now is congestion. One high round alone is taken for noise."""
        beta = self._beta()
        return self.diff > beta and (self._high_rounds >= 2 or self.diff > 2 * beta)

    def _check_competition(self, rtt: float, now: float) -> None:
        """Notice when our own back-off does not shorten the queue: it is not ours.

        A delay-based flow yields to a loss-based one that keeps the queue full; after
        COMPETE_AFTER more ineffective than effective cuts (the round RTT stayed where it
        was), the controller stops reading the queue as its own and backs off on loss only
        (like CUBIC), until two rounds show the queue gone again.
        """
        if rtt <= 0:
            return
        if self.competing:
            if self.diff < self._alpha():
                self._calm_rounds += 1
                if self._calm_rounds >= 2:
                    self.competing = False
                    self._ineffective_cuts = 0
                    if self.rate_mode:
                        self.rate_mode = False
                        self.congestion_window = max(int(self.bdp), self.minimum_window)
            else:
                self._calm_rounds = 0
            return
        if self._rtt_at_cut > 0:
            self._rounds_since_cut += 1
        if self._rtt_at_cut > 0 and self._rounds_since_cut >= RELIEF_ROUNDS:
            # a queue of our own drains within a round or two of the cut
            relieved = rtt < self._rtt_at_cut - (self._rtt_at_cut - self.min_rtt) / 4
            self._ineffective_cuts = 0 if relieved else self._ineffective_cuts + 1
            self._rtt_at_cut = 0.0
            if self._ineffective_cuts >= COMPETE_AFTER:
                self.competing = True
                self._calm_rounds = 0
                self.rate_mode = now >= self._loss_driven_until
                self._trial_rounds = 0
                self._trial_lossy = 0
        self._last_round_rtt = rtt

    def _cut(
        self, now: float, *, to_bdp: bool, cause: str, factor: float = COMPETE_BACKOFF
    ) -> None:
        """Back off at most once per round trip."""
        if now - self._last_cut < max(self.smoothed_rtt, self.min_rtt):
            return
        self._last_cut = now
        self._sample_queued = True
        self.cuts[cause] = self.cuts.get(cause, 0) + 1
        if self._rtt_at_cut == 0.0:
            self._rtt_at_cut = self._last_round_rtt
            self._rounds_since_cut = 0
        self.congestion_events += 1
        if to_bdp and self.bdp > 0:
            # drain what this flow keeps queued, but not below the Westwood estimate
            drained = self.congestion_window - self.diff
            target = max(drained, self.bdp, self.congestion_window / 2)
        elif self.competing:
            # a queue shared with loss-driven flows: back off as CUBIC does, so neither
            # side starves the other
            target = self.congestion_window * factor
        else:
            # A loss burst without a queue: the more random loss is usual here, the gentler.
            factor = 0.5 + min(self.loss_rate * 10, 0.35)
            target = max(self.congestion_window * factor, self.bdp)
        self.congestion_window = max(int(min(target, self.congestion_window)), self.minimum_window)
        self.ssthresh = self.congestion_window
        self.phase = Phase.SATURATED
        self._rounds_saturated = 0

    def on_packets_lost(
        self, *, lost_bytes: int, newest_sent_time: float, bytes_in_flight: int, now: float
    ) -> None:
        self._round_lost += lost_bytes
        self._sample_lost_bytes += lost_bytes
        if self.competing:
            self.random_losses += 1  # the round decides (_end_round)
        elif self._queue_confirmed() and newest_sent_time > self._last_cut:
            self._cut(now, to_bdp=True, cause="loss_queue")
        else:
            self.random_losses += 1

    def on_retransmission_timeout(self, *, now: float) -> None:
        self.ssthresh = max(int(self.bdp), self.minimum_window)
        # Without a queue the timeout most likely followed a lost retransmission, not
        # congestion: restart from the Westwood estimate times the base RTT instead of two
        # datagrams.
        quiet = not self._delay_signal()
        self.congestion_window = max(int(self.bdp) if quiet else 0, self.minimum_window)
        self.phase = Phase.SLOW_START
        self._last_cut = now

    def on_packet_sent(self, *, size: int, now: float) -> None:
        if (
            self.phase == Phase.SLOW_START
            and self.ssthresh is not None
            and (self.congestion_window >= self.ssthresh)
        ):
            self.phase = Phase.PROBING

    def pacing_rate(self, smoothed_rtt: float) -> float:
        if self.rate_mode and self.max_bandwidth > 0:
            return RATE_GAINS[self._gain_index] * self.max_bandwidth
        rtt = self.min_rtt or smoothed_rtt or 0.1
        gain = PACING_GAIN_STARTUP if self.phase == Phase.SLOW_START else PACING_GAIN
        return gain * self.congestion_window / max(rtt, 1e-3)

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "phase": self.phase.value,
            "bandwidth_bps": round(self.bandwidth * 8),
            "max_bandwidth_bps": round(self.max_bandwidth * 8),
            "link_bandwidth_bps": round(self.link_bandwidth * 8),
            "min_rtt_ms": round(self.min_rtt * 1000, 2),
            "queued_bytes": round(self.diff),
            "loss_rate": round(self.loss_rate, 4),
            "random_losses": self.random_losses,
            "shared_loss_rounds": self.shared_loss_rounds,
            "congestion_events": self.congestion_events,
            "cuts": dict(self.cuts),
            "competing": self.competing,
            "rate_mode": self.rate_mode,
            "trial_lossy": self._trial_lossy,
        }
