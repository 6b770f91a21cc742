# Print-based logging gated by an integer level (0 off, 1 error, 2 info, 3 debug).
# Never pass secrets (keys, Wi-Fi passwords, tokens) to these functions.
from micropython import const

_ERROR = const(1)
_INFO = const(2)
_DEBUG = const(3)

level = 2


def error(*args):
    if level >= _ERROR:
        print("E", *args)


def info(*args):
    if level >= _INFO:
        print("I", *args)


def debug(*args):
    if level >= _DEBUG:
        print("D", *args)
