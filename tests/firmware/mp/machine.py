# Test double of MicroPython's machine module (for the WebAssembly port, which has none).
class Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2

    def __init__(self, ident=None, mode=0, pull=None):
        self.level = 1 if pull == 2 else 0
        self.history = []

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        self.history.append(v)


wdts = []


class WDT:
    def __init__(self, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        wdts.append(self)

    def feed(self):
        self.feeds += 1


resets = []


def reset():
    resets.append(1)
