# BLE with aioble: the provisioning service and the bridge service.
#
# Provisioning: STATUS (read, notify: state, nonce, result) and REQUEST (write; chunked, a
# sealed request, see brelay.prov). Bridge: RX (write without response, chunked frames from a
# nearby peer to the home box) and TX (notify, frames from the box chunked to the negotiated
# MTU). One connection at a time (Pico W allows one) and four characteristics in all, so the
# GATT database stays far below the Pico W's 512 bytes. Where the port supports LE Secure
# Connections it is switched on as well; the sealed requests never rely on it.
import asyncio
from collections import deque

import aioble
import bluetooth
from brelay import chunk, log
from micropython import const

PROV_UUID = bluetooth.UUID("b17c0001-6e6f-6465-8000-00805f9b34fb")
STATUS_UUID = bluetooth.UUID("b17c0002-6e6f-6465-8000-00805f9b34fb")
REQUEST_UUID = bluetooth.UUID("b17c0003-6e6f-6465-8000-00805f9b34fb")
BRIDGE_UUID = bluetooth.UUID("b17c0101-6e6f-6465-8000-00805f9b34fb")
BRIDGE_RX_UUID = bluetooth.UUID("b17c0102-6e6f-6465-8000-00805f9b34fb")
BRIDGE_TX_UUID = bluetooth.UUID("b17c0103-6e6f-6465-8000-00805f9b34fb")

_ADV_US = const(250000)
MTU = const(247)
_QUEUE = const(4)
MAX_FRAME = const(1200)


def secure_connections(ble):
    """Switch on LE Secure Connections pairing where the port has it; True when it does."""
    try:
        ble.config(le_secure=True, mitm=True, bond=False)
        return True
    except (ValueError, OSError, AttributeError, TypeError):
        return False


class BleServices:
    def __init__(self, prov, on_config, to_box, now_ms):
        self.prov = prov
        self.on_config = on_config
        self.to_box = to_box
        self.now_ms = now_ms
        ps = aioble.Service(PROV_UUID)
        self.status = aioble.Characteristic(ps, STATUS_UUID, read=True, notify=True)
        self.request = aioble.Characteristic(ps, REQUEST_UUID, write=True, capture=True)
        bs = aioble.Service(BRIDGE_UUID)
        self.rx = aioble.Characteristic(bs, BRIDGE_RX_UUID, write_no_response=True, capture=True)
        self.tx = aioble.Characteristic(bs, BRIDGE_TX_UUID, notify=True)
        aioble.register_services(ps, bs)
        self.secure = secure_connections(aioble.core.ble)
        self.conn = None
        self.outq = deque((), _QUEUE)
        self.out_flag = asyncio.ThreadSafeFlag()
        self.dropped = 0
        self.publish()

    def publish(self):
        """Refresh the status value (never any secret) and notify a subscribed central."""
        st = self.prov.status()
        self.status.write(st)
        if self.conn is not None:
            try:
                self.status.notify(self.conn, st)
            except Exception as e:
                log.debug("status notify failed", e)

    def to_peer(self, frame):
        """A frame from the box for the BLE peer; a bounded queue, the oldest dropped."""
        if self.conn is None:
            self.dropped += 1
            return
        if len(self.outq) >= _QUEUE:
            self.outq.popleft()
            self.dropped += 1
        self.outq.append(bytes(frame))
        self.out_flag.set()

    async def run(self):
        while True:
            conn = await aioble.advertise(
                _ADV_US, name="bitchat-relay", services=[PROV_UUID, BRIDGE_UUID]
            )
            self.conn = conn
            log.info("ble peer connected")
            try:
                await conn.exchange_mtu(MTU)
            except Exception as e:
                log.debug("mtu exchange failed", e)
            self.publish()
            tasks = [
                asyncio.create_task(self._requests()),
                asyncio.create_task(self._bridge_in()),
                asyncio.create_task(self._bridge_out()),
            ]
            await conn.disconnected(timeout_ms=None)
            for t in tasks:
                t.cancel()
            self.conn = None
            while self.outq:
                self.outq.popleft()
            log.info("ble peer gone")

    async def _requests(self):
        joiner = chunk.Joiner(384)
        while True:
            _, data = await self.request.written()
            frame = joiner.feed(data)
            if frame is None:
                continue
            fields = self.prov.request(frame, self.now_ms())
            if fields is not None:
                self.on_config(fields)
            self.publish()

    async def _bridge_in(self):
        joiner = chunk.Joiner(MAX_FRAME)
        while True:
            _, data = await self.rx.written()
            frame = joiner.feed(data)
            if frame is not None and not self.to_box(frame):
                self.dropped += 1

    async def _bridge_out(self):
        while True:
            await self.out_flag.wait()
            while self.outq and self.conn is not None:
                frame = self.outq.popleft()
                for part in chunk.chunks(frame, self.conn.mtu or 23):
                    self.tx.notify(self.conn, part)
                    await asyncio.sleep_ms(0)
