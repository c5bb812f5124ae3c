"""SIPp as a caller on loopback: the scenarios under tests/fixtures/sip/, a prompt spoken into a call (RTP pcap)
and a key press (RFC 4733), and one run of sipp with a deadline."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np

from appliance.audio import read_audio
from appliance.bench.pcap import write_rtp_pcap

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).resolve().parents[1] / "fixtures" / "sip"
EN = Path("/usr/share/asterisk/sounds/en")
DTMF_1 = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")
UAS_ECHO = SCENARIOS / "uas_echo.xml"  # answer, echo the media, take the BYE


def scenario(tmp: Path, prompt: str, listen_ms: int) -> Path:
    pcm = read_audio(EN / f"{prompt}.wav", 8000).samples
    pcm = np.concatenate([np.zeros(4000, np.float32), pcm, np.zeros(8000, np.float32)])
    speech_s = write_rtp_pcap(tmp / "speech.pcap", pcm)
    text = (SCENARIOS / "uac_speech.xml").read_text()
    text = text.replace("@SPEECH@", str(tmp / "speech.pcap")).replace("@DTMF@", str(DTMF_1))
    text = text.replace("@SPEECH_MS@", str(int(speech_s * 1000))).replace("@LISTEN_MS@", str(listen_ms))
    path = tmp / "call.xml"
    path.write_text(text)
    return path


async def sipp(path: Path, port: int, calls: int = 1, rate: int = 10, limit: int | None = None,
               extra: tuple[str, ...] = ()) -> tuple[int, str]:
    assert SIPP
    args = [SIPP, "-sf", str(path), "-m", str(calls), "-r", str(rate), "-i", "127.0.0.1", "-p", "0",
            "-mp", "0", "-s", "bot", "-timeout", "60s", "-timeout_error", "-nostdin", *extra]
    if limit:
        args += ["-l", str(limit)]
    proc = await asyncio.create_subprocess_exec(*args, f"127.0.0.1:{port}", stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")[-3000:]
