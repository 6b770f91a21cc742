"""A small sorted set of half-open integer ranges."""

from __future__ import annotations

import bisect


class RangeSet:
    """Disjoint, sorted, half-open ranges ``[start, stop)``, merged on insert."""

    __slots__ = ("_starts", "_stops")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(zip(self._starts, self._stops, strict=True))

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._stops, strict=True))

    def first(self) -> tuple[int, int]:
        return self._starts[0], self._stops[0]

    def last(self) -> tuple[int, int]:
        return self._starts[-1], self._stops[-1]

    def add(self, start: int, stop: int) -> None:
        if start >= stop:
            return
        starts, stops = self._starts, self._stops
        # fast path: append at the end or extend the last range
        if not starts or start > stops[-1]:
            starts.append(start)
            stops.append(stop)
            return
        if start >= starts[-1]:
            if stop > stops[-1]:
                stops[-1] = stop
            return
        i = bisect.bisect_left(stops, start)
        j = bisect.bisect_right(starts, stop)
        if i == j:
            starts.insert(i, start)
            stops.insert(i, stop)
            return
        new_start = min(start, starts[i])
        new_stop = max(stop, stops[j - 1])
        starts[i:j] = [new_start]
        stops[i:j] = [new_stop]

    def subtract(self, start: int, stop: int) -> None:
        if start >= stop or not self._starts:
            return
        starts, stops = self._starts, self._stops
        i = bisect.bisect_right(stops, start)
        new_starts: list[int] = []
        new_stops: list[int] = []
        j = i
        while j < len(starts) and starts[j] < stop:
            if starts[j] < start:
                new_starts.append(starts[j])
                new_stops.append(start)
            if stops[j] > stop:
                new_starts.append(stop)
                new_stops.append(stops[j])
            j += 1
        starts[i:j] = new_starts
        stops[i:j] = new_stops

    def shift(self) -> tuple[int, int]:
        start, stop = self._starts.pop(0), self._stops.pop(0)
        return start, stop

    def trim_below(self, limit: int) -> None:
        """Drop everything below ``limit``."""
        self.subtract(self._starts[0] if self._starts else limit, limit)

    def contains(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._stops[i]

    def covers(self, start: int, stop: int) -> bool:
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and stop <= self._stops[i]
