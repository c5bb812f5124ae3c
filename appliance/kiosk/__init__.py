"""The kiosk: the page a browser on (or near) the device shows, and the same session on the device's own
microphone and speaker."""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
