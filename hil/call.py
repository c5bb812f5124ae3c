"""The HIL greeting call: SIPp calls the device over TCP as a quiet caller whose SDP points the device's RTP at
a recorder on the harness (``media_host``: the harness's address as the device reaches it); what the device
said comes back decoded from PCMU as 8 kHz audio, for the scenario to transcribe."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np

from appliance.audio import ulaw_decode
from appliance.sip.rtp import RtpError, RtpPacket

SCENARIO = Path(__file__).resolve().parent / "fixtures" / "uac_listen.xml"
PCMU = 0


class CallError(Exception):
    """The call could not be made or ended badly; the message carries SIPp's own words."""


class Recorder:
    """A UDP socket on every address of the harness that keeps the PCMU payloads of the RTP it receives, in
    arrival order (other payload types, RTCP and junk are counted and dropped)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.payloads: list[bytes] = []
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtp-recorder", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
                packet = RtpPacket.parse(data)
            except TimeoutError:
                continue
            except RtpError:
                self.dropped += 1
                continue
            if packet.payload_type == PCMU:
                self.payloads.append(packet.payload)
            else:
                self.dropped += 1

    def audio(self) -> np.ndarray:
        return ulaw_decode(b"".join(self.payloads)) if self.payloads else np.zeros(0, np.int16)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def greeting_call(sip: tuple[str, int], media_host: str, work: Path, listen_s: float = 40,
                  number: str = "reception") -> np.ndarray:
    """Call ``number`` at ``sip`` (TCP), listen up to ``listen_s`` (or until the device hangs up), hang up; the
    device's audio as 8 kHz int16."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise CallError("no sipp (Debian sip-tester; make installs it)")
    with Recorder() as recorder:
        text = SCENARIO.read_text().replace("@MEDIA_HOST@", media_host)
        text = text.replace("@MEDIA_PORT@", str(recorder.port)).replace("@LISTEN_MS@", str(int(listen_s * 1000)))
        scenario = work / "uac_listen.xml"
        scenario.write_text(text)
        local = "127.0.0.1" if sip[0].startswith("127.") else media_host
        args = [sipp, "-sf", str(scenario), "-m", "1", "-t", "t1", "-i", local, "-p", "0", "-s", number,
                "-timeout", f"{int(listen_s) + 60}s", "-timeout_error", "-nostdin", f"{sip[0]}:{sip[1]}"]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=listen_s + 90, cwd=work,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CallError(f"sipp did not end within {listen_s + 90:g} s") from exc
        if done.returncode != 0:
            raise CallError(f"sipp exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    return recorder.audio()
