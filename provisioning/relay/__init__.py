"""Relay boards: the firmware bundle, flashing over the raw REPL, BLE enrollment."""
