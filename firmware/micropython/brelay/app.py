# The relay's main program: config, Wi-Fi, the relay engine, BLE, LED, watchdog and memory.
#
# The watchdog starts only after GRACE_MS (a running WDT cannot be stopped and would reset the
# board under the enrollment tool) and is fed only at the end of a main-loop turn that ran
# within budget. gc.collect() runs every GC_MS and whenever free heap drops under GC_LOW.
import gc
import json
import sys

import machine
import network
from brelay import cfg, led, log, prov, relay, ticks
from brelay.net import Net
from micropython import const

GRACE_MS = const(60000)
WDT_MS = const(8000)
GC_MS = const(10000)
GC_LOW = const(16384)
_WIFI_MIN_MS = const(2000)
_WIFI_MAX_MS = const(60000)
_LOOP_BUDGET_MS = const(2000)


def board_pins():
    """(LED pin, button) for this board: Pico W's "LED" and BOOTSEL, or ESP32's GPIO2/GPIO0."""
    if sys.platform == "rp2":
        import rp2

        return machine.Pin("LED", machine.Pin.OUT), rp2.bootsel_button
    btn = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)
    return machine.Pin(2, machine.Pin.OUT), lambda: 1 - btn.value()


class Wifi:
    """Station connection with back-off between attempts."""

    def __init__(self, ssid, psk, now):
        self.wlan = network.WLAN(network.STA_IF)
        self.ssid = ssid
        self.psk = psk
        self.backoff = _WIFI_MIN_MS
        self.next = now
        self.was_up = False

    def poll(self, now):
        """True while connected; starts a new attempt when one is due."""
        if self.wlan.isconnected():
            self.backoff = _WIFI_MIN_MS
            self.was_up = True
            return True
        self.was_up = False
        if self.ssid and ticks.diff(now, self.next) >= 0:
            log.info("wifi connecting to", self.ssid)
            self.wlan.active(True)
            try:
                self.wlan.connect(self.ssid, self.psk)
            except OSError as e:
                log.error("wifi connect failed", e)
            self.next = ticks.add(now, self.backoff)
            self.backoff = min(self.backoff * 2, _WIFI_MAX_MS)
        return False


def boot_config(path=cfg.PATH):
    """Load the config; make the setup code at first boot and show it once on serial."""
    c = cfg.load(path)
    raw = c["raw"]
    if not c["setup"]:
        raw["setup"] = prov.new_setup_code()
    if not raw.get("setup_shown"):
        code = raw["setup"]
        print("bitchat relay setup code:", code[:4], code[4:8], code[8:12], code[12:])
        raw["setup_shown"] = True
    if "relay_id" in c:
        # A new epoch per boot keeps control counters growing across restarts.
        raw["epoch"] = c["epoch"] + 1
    cfg.save(raw, path)
    return cfg.parse(json.dumps(raw))


class App:
    def __init__(self, c, pin, button, now, ble_factory=None, path=cfg.PATH):
        self.c = c
        self.path = path
        log.level = c["log"]
        self.led = led.Led(pin, now)
        self.button = button
        self.enrolled = "relay_id" in c
        self.prov = prov.Provisioner(c["setup"], now, pairing=not self.enrolled)
        self.wifi = Wifi(c["ssid"], c["psk"], now)
        self.relay = relay.Relay(c, Net(), heap=gc.mem_free) if self.enrolled else None
        self.ble = ble_factory(self) if ble_factory else None
        if self.relay is not None and self.ble is not None:
            self.relay.bridge = self.ble.to_peer
        self.wdt = None
        self.boot_ms = now
        self.gc_ms = now
        self.last_ms = now
        self.error = False
        self.restart = False

    def on_config(self, fields):
        """Provisioning succeeded: save the new settings; the board restarts into them."""
        raw = self.c["raw"]
        raw["ssid"] = fields["ssid"]
        raw["psk"] = fields["psk"]
        raw["relay_id"] = fields["relay_id"].hex()
        raw["key"] = fields["key"].hex()
        raw["home"] = fields["home"][0] + ":" + str(fields["home"][1])
        cfg.save(raw, self.path)
        log.info("provisioned; restarting")
        self.restart = True

    def to_box(self, frame):
        return self.relay is not None and self.relay.send_bridge(frame)

    def turn(self, now):
        """One main-loop turn; returns how many datagrams were handled."""
        if self.button():
            self.prov.press(now)
            if self.ble is not None:
                self.ble.publish()
        self.prov.tick(now)
        done = 0
        if self.relay is not None:
            up = self.wifi.poll(now)
            if up and self.relay.state == relay.OFFLINE:
                self.relay.start(now)
            elif not up and self.relay.state != relay.OFFLINE:
                log.info("wifi lost")
                self.relay.stop()
            done = self.relay.pump(now)
            self.relay.step(now)
        self.led.set(self.pattern(), now)
        self.led.tick(now)
        self.memory(now)
        self.watchdog(now)
        return done

    def pattern(self):
        if self.error:
            return led.ERROR
        if self.prov.state == prov.PAIRING:
            return led.PAIRING
        if self.relay is None:
            return led.OFF
        if self.relay.state == relay.RUNNING:
            return led.RELAYING
        return led.CONNECTING

    def memory(self, now):
        if ticks.diff(now, self.gc_ms) >= GC_MS or gc.mem_free() < GC_LOW:
            gc.collect()
            self.gc_ms = now

    def watchdog(self, now):
        healthy = ticks.diff(now, self.last_ms) < _LOOP_BUDGET_MS
        self.last_ms = now
        if self.wdt is None:
            if ticks.diff(now, self.boot_ms) >= GRACE_MS:
                self.wdt = machine.WDT(timeout=WDT_MS)
                log.info("watchdog armed")
        elif healthy:
            self.wdt.feed()


async def _loop(app):
    import asyncio

    while not app.restart:
        now = ticks.ms()
        try:
            done = app.turn(now)
            app.error = False
        except Exception as e:
            app.error = True
            done = 0
            log.error("main loop:", e)
        await asyncio.sleep_ms(0 if done else 2)
    await asyncio.sleep_ms(500)
    machine.reset()


def main():
    import asyncio

    c = boot_config()
    pin, button = board_pins()

    def make_ble(app):
        try:
            from brelay.ble import BleServices
        except ImportError as e:
            log.error("no BLE on this board:", e)
            return None
        return BleServices(app.prov, app.on_config, app.to_box, ticks.ms)

    app = App(c, pin, button, ticks.ms(), make_ble)

    async def both():
        if app.ble is not None:
            asyncio.create_task(app.ble.run())
        await _loop(app)

    asyncio.run(both())
