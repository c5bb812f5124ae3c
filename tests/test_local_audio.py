"""Local audio: PortAudio on a real ALSA device (a file-backed PCM defined in a private ~/.asoundrc, since this
machine has no sound card), the clear message without any device, and the kiosk session on a paced
microphone/speaker pair."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio import read_audio
from appliance.bench.text import normalise
from appliance.kiosk.local import run_local
from appliance.kiosk.sound import SoundDevice, SoundError, SoundSystem
from appliance.sessions import SessionSpec
from appliance.voice.asr import AsrOptions
from appliance.voice.stack import VoiceStack
from tests.support.cli import appliance

EN = Path("/usr/share/asterisk/sounds/en")
ASOUNDRC = """pcm.kioskcard {{
  type file
  slave.pcm null
  file "{home}/speaker.raw"
  infile "{home}/mic.raw"
  format "raw"
  hint {{ show on description "Kiosk test card" }}
}}
"""


@pytest.fixture
def alsa_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(home=tmp_path))
    (tmp_path / "mic.raw").write_bytes(bytes(32000))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_list_devices_without_a_sound_card(tmp_path: Path) -> None:
    proc = appliance("kiosk", "--list-devices", env={"HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert "no sound devices found" in proc.stderr and "Traceback" not in proc.stderr
    assert "ALSA lib" not in proc.stderr  # PortAudio's probing chatter is kept off the terminal


def test_list_and_find_devices_by_name(alsa_home: Path) -> None:
    proc = appliance("kiosk", "--list-devices", env={"HOME": str(alsa_home)})
    assert proc.returncode == 0 and "kioskcard" in proc.stdout
    sound = SoundSystem()
    try:
        card = sound.find("KIOSK", "input")
        assert card.name == "kioskcard" and card.inputs > 0
        assert sound.find(None, "output").name == "kioskcard"
        with pytest.raises(SoundError, match="no input device named like 'usb'.*kioskcard"):
            sound.find("usb", "input")
        assert sound.rate_for(card, "input", (16000,)) == 16000
        stream = sound.open(card, "input", 16000, 320, None)  # a real ALSA capture stream, blocking mode
        data = stream.read(320)
        stream.close()
        assert len(data) == 640
    finally:
        sound.close()


def test_unknown_device_name_is_one_clear_line(alsa_home: Path) -> None:
    proc = appliance("kiosk", "--input", "usb-headset", env={"HOME": str(alsa_home)})
    assert proc.returncode == 2 and "no input device named like 'usb-headset'" in proc.stderr
    assert "Traceback" not in proc.stderr


class PacedCard:
    """Stands in for PortAudio where no sound card exists: calls the session's stream callbacks every 20 ms,
    from its own thread, like a card's clock would; the microphone plays a recording, the speaker records."""

    pyaudio = type("pa", (), {"paContinue": 0})

    def __init__(self, mic: np.ndarray) -> None:
        self.mic = (mic * 32767).astype("<i2").tobytes()
        self.played = bytearray()
        self.threads: list[threading.Thread] = []
        self.running = True

    def rate_for(self, device: SoundDevice, kind: str, preferred: tuple[int, ...]) -> int:
        return 16000 if kind == "input" else 22050

    def open(self, device: SoundDevice, kind: str, rate: int, frames: int, callback: Any) -> Any:
        card = self

        def clock() -> None:
            position, start, n = 0, time.monotonic(), 0
            while card.running:
                n += 1
                if kind == "input":
                    chunk = card.mic[position:position + frames * 2].ljust(frames * 2, b"\0")
                    position += frames * 2
                    callback(chunk, frames, None, 0)
                else:
                    card.played += callback(None, frames, None, 0)[0]
                time.sleep(max(0.0, start + n * frames / rate - time.monotonic()))

        thread = threading.Thread(target=clock, daemon=True)
        thread.start()
        self.threads.append(thread)
        return type("stream", (), {"stop_stream": lambda s: setattr(card, "running", False),
                                   "close": lambda s: None})()


def test_local_echo_session_hears_and_answers(stack: VoiceStack) -> None:
    speech = read_audio(EN / "agent-alreadyon.wav", 16000).samples
    card = PacedCard(np.concatenate([np.zeros(8000, np.float32), speech]))
    device = SoundDevice(0, "paced", 1, 1, 16000)
    events: list[dict[str, Any]] = []

    async def session() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(len(speech) / 16000 + 5, stop.set)
        await run_local(stack, SessionSpec(mode="echo"), card, device, device, events.append, stop)  # type: ignore[arg-type]

    asyncio.run(session())
    assert events[0]["type"] == "ready" and events[0]["output_rate"] == 22050
    finals = [e["source"] for e in events if e["type"] == "caption" and e["final"]]
    assert "agent number" in normalise(" ".join(finals))
    played = np.frombuffer(bytes(card.played), "<i2").astype(np.float32) / 32768
    assert (np.abs(played) > 0.02).sum() > 22050 // 2  # half a second of answer reached the speaker
    asr = stack.asr[stack.asr_model("en", "transcribe")]
    from appliance.audio import resample

    heard_back = asr.transcribe(resample(played, 22050, 16000), AsrOptions(language="en")).text
    assert "agent" in normalise(heard_back)


def test_pyaudio_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyaudio(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyaudio":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyaudio)
    with pytest.raises(SoundError, match="portaudio19-dev"):
        SoundSystem()


