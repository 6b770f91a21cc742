# Test double of MicroPython's network module.
STA_IF = 0
up = [False]
connects = []


class WLAN:
    def __init__(self, iface):
        pass

    def isconnected(self):
        return up[0]

    def active(self, on=None):
        return True

    def connect(self, ssid, psk):
        connects.append(ssid)
