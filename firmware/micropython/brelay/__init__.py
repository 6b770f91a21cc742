# bitchat relay firmware for MicroPython boards (ESP32, Pico W).
VERSION = 1
