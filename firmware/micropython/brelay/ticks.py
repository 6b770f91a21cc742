# Millisecond ticks: MicroPython's (C, no heap), or the same arithmetic under CPython.
try:
    from time import ticks_add as add
    from time import ticks_diff as diff
    from time import ticks_ms as ms
except ImportError:
    import time as _time

    _PERIOD = 1 << 30

    def ms():
        return int(_time.monotonic() * 1000) & (_PERIOD - 1)

    def diff(a, b):
        return ((a - b + _PERIOD // 2) & (_PERIOD - 1)) - _PERIOD // 2

    def add(a, b):
        return (a + b) & (_PERIOD - 1)
