"""The root of the agent's exceptions.

Every error the agent raises on purpose derives from :class:`NodeError`; its message is one line
that says what was wrong, where, and what to do. The CLI prints it and exits non-zero.
"""


class NodeError(Exception):
    """Root of all bitchat-node errors."""


class ConfigError(NodeError, ValueError):
    """The configuration file or a command-line option is invalid."""


class IdentityError(NodeError):
    """The identity key is missing, corrupt or unsafe."""


class DataDirError(NodeError, OSError):
    """The data directory is unusable (missing, unwritable, locked by another agent)."""


class StateError(NodeError):
    """state.db is corrupt or cannot be opened."""
