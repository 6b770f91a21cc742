"""The local dashboard: aiohttp app, JSON API and the static page."""
