"""Hardware of the box: sensors, thermal policy, fan, LEDs, data disk and power.

Each kind of hardware has one small interface, a Linux implementation whose paths hang off a
root directory (``[hwmon] sysfs_root``, ``--sysfs-root``) and a fake that records what was done
and when. The policies (thermal levels, disk states, LED patterns) are sans-I/O.
"""

from node.hwmon.disks import DiskPolicy, DiskProbe, DiskReading, FakeDiskProbe, LinuxDiskProbe
from node.hwmon.errors import DeviceMissing, HwmonError, SensorError
from node.hwmon.findings import Finding
from node.hwmon.gpio import FakeGpio, Gpio, PwmFan, RPiGpio, open_gpio
from node.hwmon.leds import PATTERNS, FakeLed, GpioLed, Led, LedDriver, LedSequencer, SysfsLed
from node.hwmon.sensors import FakeSensors, LinuxSensors, Readings, Sensors, read_all
from node.hwmon.thermal import ThermalConfig, ThermalLevel, ThermalPolicy

__all__ = [
    "PATTERNS",
    "DeviceMissing",
    "DiskPolicy",
    "DiskProbe",
    "DiskReading",
    "FakeDiskProbe",
    "FakeGpio",
    "FakeLed",
    "FakeSensors",
    "Finding",
    "Gpio",
    "GpioLed",
    "HwmonError",
    "Led",
    "LedDriver",
    "LedSequencer",
    "LinuxDiskProbe",
    "LinuxSensors",
    "PwmFan",
    "RPiGpio",
    "Readings",
    "SensorError",
    "Sensors",
    "SysfsLed",
    "ThermalConfig",
    "ThermalLevel",
    "ThermalPolicy",
    "open_gpio",
    "read_all",
]
