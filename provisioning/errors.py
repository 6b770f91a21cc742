"""The root of the fleet tools' exceptions."""


class FleetError(Exception):
    """Root of all bitchat-fleet errors; the message is one line saying what to do."""
