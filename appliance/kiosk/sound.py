"""The device's own sound cards through PortAudio (pyaudio): list them, find one by name, open streams.

PortAudio's ALSA and JACK probes print to stderr from C; that chatter is kept off the user's terminal
and a machine without a sound card gets one clear error instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from appliance.errors import ApplianceError


class SoundError(ApplianceError):
    """No usable sound device, or PortAudio is missing."""


@dataclass(frozen=True)
class SoundDevice:
    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: int


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured): nothing to silence
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


class SoundSystem:
    def __init__(self) -> None:
        try:
            import pyaudio
        except ImportError:
            raise SoundError("local audio needs PortAudio bindings; fix: apt-get install portaudio19-dev && "
                             "pip install 'appliance[audio]'") from None
        self.pyaudio = pyaudio
        with _quiet_stderr():
            self.pa = pyaudio.PyAudio()

    def devices(self) -> list[SoundDevice]:
        found = []
        for i in range(self.pa.get_device_count()):
            info = self.pa.get_device_info_by_index(i)
            found.append(SoundDevice(i, str(info["name"]), int(info["maxInputChannels"]),
                                     int(info["maxOutputChannels"]), int(info["defaultSampleRate"])))
        return found

    def find(self, name: str | None, kind: Literal["input", "output"]) -> SoundDevice:
        """The first device whose name contains ``name`` (any case) and can do ``kind``; without a name, the
        system default, else the first that can."""
        able = [d for d in self.devices() if (d.inputs if kind == "input" else d.outputs) > 0]
        if not able:
            raise SoundError(f"no sound {kind} device found (PortAudio sees none: no sound card, or no access to "
                             "/dev/snd); check `appliance kiosk --list-devices`, or use the kiosk page in a browser")
        if name:
            for device in able:
                if name.lower() in device.name.lower():
                    return device
            raise SoundError(f"no {kind} device named like '{name}'; available: "
                             + ", ".join(d.name for d in able))
        with contextlib.suppress(OSError, StopIteration):
            default = (self.pa.get_default_input_device_info() if kind == "input"
                       else self.pa.get_default_output_device_info())
            return next(d for d in able if d.index == int(default["index"]))
        return able[0]

    def rate_for(self, device: SoundDevice, kind: Literal["input", "output"], preferred: tuple[int, ...]) -> int:
        """The first preferred rate the device takes (mono, 16-bit), else its default rate."""
        for rate in preferred:
            args: dict[str, Any] = ({"input_device": device.index, "input_channels": 1, "input_format":
                                     self.pyaudio.paInt16} if kind == "input" else
                                    {"output_device": device.index, "output_channels": 1, "output_format":
                                     self.pyaudio.paInt16})
            with contextlib.suppress(ValueError), _quiet_stderr():
                if self.pa.is_format_supported(rate, **args):
                    return rate
        return device.default_rate

    def open(self, device: SoundDevice, kind: Literal["input", "output"], rate: int, frames: int,
             callback: Any) -> Any:
        try:
            with _quiet_stderr():
                return self.pa.open(rate=rate, channels=1, format=self.pyaudio.paInt16, frames_per_buffer=frames,
                                    input=kind == "input", output=kind == "output",
                                    input_device_index=device.index if kind == "input" else None,
                                    output_device_index=device.index if kind == "output" else None,
                                    stream_callback=callback)
        except OSError as exc:
            raise SoundError(f"cannot open {kind} device '{device.name}' at {rate} Hz: {exc}") from None

    def close(self) -> None:
        self.pa.terminate()
