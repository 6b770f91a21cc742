"""bitchat-node: the agent that runs on a bitchat mining box."""

__version__ = "0.1.0"
