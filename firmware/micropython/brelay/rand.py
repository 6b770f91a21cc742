# Random bytes for challenges, nonces and setup codes: os.urandom, which ESP32 and rp2 draw
# from their hardware random sources. A port without it cannot run the relay safely.
try:
    from os import urandom
except ImportError:

    def urandom(n):
        raise OSError("this MicroPython port has no os.urandom")
