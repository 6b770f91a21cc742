"""The lab: network namespaces, emulated links and home routers on one machine.

Used by tests, benchmarks and hil_tests (not shipped in the wheel); see docs/lab.md.
"""

from lab.emulator import EmulatorError, LinkSpec
from lab.netns import Lab, LabError, Link, Namespace
from lab.routers import Nat, Router

__all__ = ["EmulatorError", "Lab", "LabError", "Link", "LinkSpec", "Namespace", "Nat", "Router"]
