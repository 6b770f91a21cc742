# Status LED patterns on a machine.Pin: durations in ms, alternating on/off, starting on.
from brelay import ticks

PAIRING = (100, 100)
CONNECTING = (500, 500)
RELAYING = (1900, 100)
ERROR = (100, 100, 100, 100, 100, 900)
OFF = (0, 1000)


class Led:
    def __init__(self, pin, now, active_high=True):
        self.pin = pin
        self.on_level = 1 if active_high else 0
        self.pattern = OFF
        self.i = 0
        self.since = now
        self.level = None
        self._apply()

    def set(self, pattern, now):
        if pattern is self.pattern:
            return
        self.pattern = pattern
        self.i = 0
        self.since = now
        self._apply()

    def tick(self, now):
        """Advance the pattern; call often (every main-loop turn)."""
        p = self.pattern
        if ticks.diff(now, self.since) > 60000:
            # Long stall (or first tick): restart the pattern instead of replaying it.
            self.since = now
            self.i = 0
        while ticks.diff(now, self.since) >= p[self.i]:
            self.since = ticks.add(self.since, p[self.i])
            self.i = (self.i + 1) % len(p)
        self._apply()

    def _apply(self):
        on = (self.i & 1) == 0 and self.pattern[self.i] > 0
        level = self.on_level if on else 1 - self.on_level
        if level != self.level:
            self.pin.value(level)
            self.level = level
