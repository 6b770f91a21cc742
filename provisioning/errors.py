"""The root of the fleet tools' exceptions."""


class FleetError(Exception):
    """Root of all bitchat-fleet errors; the message is one line saying what to do."""


class RecipeError(FleetError):
    """A recipe file is missing, malformed or holds a bad value."""


class ImageError(FleetError):
    """A base or built image is unreadable, corrupt or has the wrong layout."""


class FlashError(FleetError):
    """Writing an image to a device was refused or failed."""


class BmapError(FleetError):
    """A block map file is malformed or does not match its image."""


class InventoryError(FleetError):
    """The fleet inventory cannot be opened or lacks a box."""


class RemoteError(FleetError):
    """A command on a box failed, or the box could not be reached."""


class HostKeyError(RemoteError):
    """A box presented a host key that differs from the one pinned at enrollment."""
