"""Real SIP peers for tests, on loopback with free ports: Kamailio (registrar and record-routing proxy with
digest auth, users on db_text) and baresip (a softphone driven over ctrl_tcp that plays a WAV and records
what it hears).

Both are context managers whose blocking calls are bounded by timeouts; from an asyncio test, wrap the waits
in ``asyncio.to_thread`` so the event loop (and the appliance on it) keeps running. Processes are always
stopped, by their own process group, on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

KAMAILIO = shutil.which("kamailio")
BARESIP = shutil.which("baresip")
SIPP = shutil.which("sipp")
BARESIP_MODULES = Path("/usr/lib/baresip/modules")


class PeerError(RuntimeError):
    """A peer that failed to start, answer or stop in time; the message ends with the tail of its log."""


def free_port(tcp_too: bool = True, also: tuple[int, ...] = ()) -> int:
    """A loopback port free for UDP (and TCP), and ``port + offset`` for each offset in ``also`` (RTP+2)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                with contextlib.ExitStack() as stack:
                    if tcp_too:
                        tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                        tcp.bind(("127.0.0.1", port))
                    for offset in also:
                        extra = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                        extra.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port
    raise PeerError("no free loopback port found")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; PeerError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(step)


class _Process:
    """A peer process in its own process group, logging to a file; stop() always reaps it."""

    def __init__(self, name: str, log: Path) -> None:
        self.name, self.log = name, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, args: list[str], cwd: Path) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        text = re.sub(r"\[\d+:\d\d:\d\d\] audio=\S+ \(bit/s\)\s*", "", self.log.read_text(errors="replace"))
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

    def fail(self, message: str) -> PeerError:
        return PeerError(f"{self.name}: {message}\n--- {self.log} ---\n{self.tail()}")

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is not None:  # died on its own: its children (Kamailio's workers) may live on
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):  # the group: workers too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
            if proc.poll() is not None:
                return
        raise self.fail(f"pid {proc.pid} survived SIGKILL")


# --- Kamailio -------------------------------------------------------------------------------------------------

KAMAILIO_CFG = """#!KAMAILIO
# Written by tests/peers.py: registrar (usrloc in memory) and record-routing proxy with digest auth.
debug=@@DEBUG@@
log_stderror=yes
children=2
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
listen=udp:@@HOST@@:@@PORT@@
listen=tcp:@@HOST@@:@@PORT@@

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "db_text.so"
loadmodule "auth.so"
loadmodule "auth_db.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", 3600)
modparam("auth", "algorithm", "@@ALGORITHM@@")
modparam("auth", "secret", "@@SECRET@@")
modparam("auth", "nonce_count", @@NONCE_COUNT@@)
modparam("auth_db", "db_url", "text://@@DB@@")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("auth_db", "load_credentials", "")

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    force_rport();
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "Ready");
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
            t_relay();
            exit;
        }
        if (is_method("ACK")) {
            if (t_check_trans()) {
                t_relay();
            }
            exit;
        }
        sl_send_reply("404", "Not Here");
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (!is_method("ACK")) {
        t_check_trans();
    }
    if (is_method("REGISTER")) {
        if (!auth_check("$fd", "subscriber", "1")) {
            auth_challenge("$fd", "@@QOP_FLAGS@@");
            exit;
        }
        consume_credentials();
        if (!save("location")) {
            sl_reply_error();
        }
        exit;
    }
    if (@@AUTH_CALLS@@ && !is_method("ACK")) {
        if (!auth_check("$fd", "subscriber", "1")) {
            auth_challenge("$fd", "@@QOP_FLAGS@@");
            exit;
        }
        consume_credentials();
    }
    if (is_method("INVITE|SUBSCRIBE")) {
        record_route();
    }
    if (uri == myself && !lookup("location")) {
        sl_send_reply("404", "Not Found");
        exit;
    }
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}
"""
QOP_FLAGS = {"": "0", "auth": "1"}  # 2 (auth-int) is broken in 5.6: H(entity-body) is never computed


def _dbtext(value: str) -> str:
    for raw, escaped in (("\\", "\\\\"), (":", "\\:"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\0", "\\0")):
        value = value.replace(raw, escaped)
    return value


class Kamailio:
    """Kamailio on ``host:port`` (UDP and TCP; port 0 picks a free one) for the users given as {name: password}.

    REGISTER needs digest auth (realm = the From domain, e.g. 127.0.0.1); with ``auth_calls`` every other
    request needs proxy auth (407) too. Requests to a registered AOR go to its contacts, record-routed.
    ``algorithm`` is MD5 or SHA-256 (what Kamailio 5.6's auth module offers); ``qop`` "auth" or "" (none:
    RFC 2069 answers). Not "auth-int": Kamailio 5.6 never hashes the body, so no correct answer passes."""

    def __init__(self, workdir: Path, users: Mapping[str, str], *, algorithm: str = "MD5", qop: str = "auth",
                 auth_calls: bool = False, host: str = "127.0.0.1", port: int = 0, debug: int = 2,
                 start_timeout: float = 10.0) -> None:
        if algorithm not in ("MD5", "SHA-256"):
            raise ValueError(f"Kamailio 5.6 offers MD5 or SHA-256, not {algorithm}")
        if qop not in QOP_FLAGS:
            raise ValueError(f"qop must be one of {sorted(QOP_FLAGS)}")
        self.workdir = workdir
        self.users = dict(users)
        self.algorithm, self.qop, self.auth_calls = algorithm, qop, auth_calls
        self.host, self.port, self.debug = host, port, debug
        self.start_timeout = start_timeout
        self.config = workdir / "kamailio.cfg"
        self._process = _Process("kamailio", workdir / "kamailio.log")

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def log_text(self) -> str:
        return self._process.log.read_text(errors="replace") if self._process.log.exists() else ""

    def write_config(self) -> None:
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (db / "version").write_text("id(int,auto) table_name(string) table_version(int) \n0:subscriber:7\n")
        rows = "".join(f"{i}:{_dbtext(name)}:{_dbtext(self.host)}:{_dbtext(password)}::\n"
                       for i, (name, password) in enumerate(self.users.items(), 1))
        (db / "subscriber").write_text("id(int,auto) username(string) domain(string) password(string) "
                                       "ha1(string,null) ha1b(string,null) \n" + rows)
        values = {"DEBUG": str(self.debug), "HOST": self.host, "PORT": str(self.port), "DB": str(db),
                  "ALGORITHM": self.algorithm, "SECRET": secrets.token_hex(16), "QOP_FLAGS": QOP_FLAGS[self.qop],
                  "AUTH_CALLS": "true" if self.auth_calls else "false", "NONCE_COUNT": "1" if self.qop else "0"}
        text = KAMAILIO_CFG
        for key, value in values.items():
            text = text.replace(f"@@{key}@@", value)
        self.config.write_text(text)

    def start(self) -> Kamailio:
        if KAMAILIO is None:
            raise PeerError("kamailio is not installed (Debian package kamailio; make test installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.write_config()
        check = subprocess.run([KAMAILIO, "-c", "-f", str(self.config)],
                               capture_output=True, text=True, timeout=20)
        if check.returncode:
            raise PeerError(f"kamailio rejects {self.config}:\n{(check.stdout + check.stderr)[-3000:]}")
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        self._process.start([KAMAILIO, "-DD", "-E", "-f", str(self.config), "-P", str(self.workdir / "kamailio.pid"),
                             "-w", str(self.workdir), "-Y", str(run), "-m", "32", "-M", "4"], self.workdir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.host, 0))
            sock.settimeout(0.1)
            local = sock.getsockname()[1]
            while time.monotonic() < deadline:
                if not self._process.alive():
                    raise self._process.fail("exited during start-up")
                branch = secrets.token_hex(6)
                sock.sendto((f"OPTIONS {self.uri} SIP/2.0\r\nVia: SIP/2.0/UDP {self.host}:{local};branch=z9hG4bK"
                             f"{branch};rport\r\nFrom: <sip:probe@{self.host}>;tag={branch}\r\nTo: <{self.uri}>\r\n"
                             f"Call-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                             "Content-Length: 0\r\n\r\n").encode(), self.address)
                with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                    if sock.recv(65535).startswith(b"SIP/2.0 "):
                        return
        raise self._process.fail(f"no answer to OPTIONS on {self.uri} within {self.start_timeout:.0f} s")

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- baresip --------------------------------------------------------------------------------------------------

CODECS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}  # baresip wants name/rate/ch


@dataclass(frozen=True)
class Account:
    """One baresip account line. ``domain`` is host[:port]: the registrar when ``register`` is set."""

    user: str = "bob"
    domain: str = "127.0.0.1"
    password: str | None = None
    register: bool = False
    answer: str = "manual"  # "auto": answer incoming calls at once
    codecs: tuple[str, ...] = ()  # offered in this order: PCMU, PCMA, G722; empty: all, PCMU first
    regint: int = 60

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def line(self) -> str:
        params = [f"regint={self.regint if self.register else 0}", f"answermode={self.answer}"]
        if self.password is not None:
            params.insert(0, f"auth_pass={self.password}")
        if self.codecs:
            params.append("audio_codecs=" + ",".join(CODECS.get(c.upper(), c) for c in self.codecs))
        return f"<{self.aor}>;" + ";".join(params)


BARESIP_CONFIG = """# Written by tests/peers.py: no sound card; sndfile records both directions in snd_path.
poll_method epoll
sip_listen 127.0.0.1:{port}
audio_source aufile,{source}
audio_path /usr/share/baresip
rtp_ports {rtp}-{rtp_end}
module_path {modules}
module g711.so
module g722.so
module aufile.so
module sndfile.so
module ctrl_tcp.so
module_app account.so
module_app menu.so
ctrl_tcp_listen 127.0.0.1:{ctrl}
snd_path {recordings}
statmode_default off
"""


class Baresip:
    """baresip 1.0 with a private config dir: plays ``source`` (any WAV; converted to mono 16-bit at the first
    codec's rate, as aufile requires) into every call and records what it hears. Commands and events go over
    ctrl_tcp (netstring JSON).

    Recording: the sndfile filter writes ``dump-<time>-dec.wav`` (the decoded received audio, i.e. what it
    hears) and ``-enc.wav`` (what it sends) per call in ``recordings_dir``. There is no audio player. Note that
    baresip hangs up when the source WAV ends: ``pad`` appends that many seconds of silence to keep the
    call up longer."""

    def __init__(self, workdir: Path, source: Path, account: Account = Account(), *, pad: float = 0.0,
                 port: int = 0, start_timeout: float = 10.0) -> None:
        self.workdir, self.source, self.account, self.pad = workdir, source, account, pad
        self.port, self.start_timeout = port, start_timeout
        self.recordings_dir = workdir / "recordings"
        self.events: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self._responses: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._process = _Process("baresip", workdir / "baresip.log")

    @property
    def aor(self) -> str:
        return self.account.aor

    @property
    def contact(self) -> str:
        return f"sip:{self.account.user}@127.0.0.1:{self.port}"

    def start(self) -> Baresip:
        if BARESIP is None:
            raise PeerError("baresip is not installed (Debian package baresip-core; make test installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.recordings_dir.mkdir(exist_ok=True)
        self.port = self.port or free_port()
        ctrl = free_port(tcp_too=True)
        rtp = free_port(tcp_too=False) & ~1
        source = self._prepare_source()
        (self.workdir / "config").write_text(BARESIP_CONFIG.format(
            port=self.port, source=source, rtp=rtp, rtp_end=rtp + 20, modules=BARESIP_MODULES, ctrl=ctrl,
            recordings=self.recordings_dir))
        (self.workdir / "accounts").write_text(self.account.line() + "\n")
        self._process.start([BARESIP, "-f", str(self.workdir)], self.workdir)
        try:
            self._sock = wait_until(lambda: self._connect(ctrl), self.start_timeout, "baresip's ctrl_tcp")
            self._reader = threading.Thread(target=self._read, name="baresip-ctrl", daemon=True)
            self._reader.start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def rate(self) -> int:
        """The sample rate of the first codec offered: aufile refuses a WAV at any other rate."""
        first = CODECS.get(self.account.codecs[0].upper(), self.account.codecs[0]) if self.account.codecs else ""
        return int(first.split("/")[1]) if first.count("/") >= 1 else 8000

    def _prepare_source(self) -> Path:
        """``source`` as 16-bit mono at ``rate`` (linear interpolation is enough for tests), then ``pad``."""
        audio, rate = sf.read(self.source, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != self.rate:
            times = np.arange(int(len(audio) * self.rate / rate)) / self.rate
            audio = np.interp(times, np.arange(len(audio)) / rate, audio).astype(np.float32)
        audio = np.concatenate([audio, np.zeros(int(self.pad * self.rate), np.float32)])
        prepared = self.workdir / "source.wav"
        sf.write(prepared, audio, self.rate, subtype="PCM_16")
        return prepared

    def _connect(self, port: int) -> socket.socket | None:
        if not self._process.alive():
            raise self._process.fail("exited during start-up")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=0.5)
        except OSError:
            return None

    def _read(self) -> None:
        assert self._sock is not None
        sock, buffer = self._sock, b""
        sock.settimeout(None)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._sock = None
                    self._cond.notify_all()
                return
            buffer += data
            while True:
                length, colon, rest = buffer.partition(b":")
                if not colon or not length.isdigit() or len(rest) < int(length) + 1:
                    break
                message = json.loads(rest[:int(length)])
                buffer = rest[int(length) + 1:]
                with self._cond:
                    if message.get("response"):
                        self._responses[str(message.get("token"))] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def command(self, name: str, params: str = "", timeout: float = 5.0) -> str:
        """Run a menu command (dial, hangup, accept, sndcode, reginfo…); its output, or PeerError."""
        token = secrets.token_hex(4)
        data = json.dumps({"command": name, "params": params, "token": token}).encode()
        with self._cond:
            if self._sock is None:
                raise self._process.fail("ctrl_tcp is not connected")
            self._sock.sendall(str(len(data)).encode() + b":" + data + b",")
            if not self._cond.wait_for(lambda: token in self._responses or self._sock is None, timeout):
                raise self._process.fail(f"no answer to {name} {params} within {timeout:.0f} s")
            response = self._responses.pop(token, None)
        if response is None:
            raise self._process.fail(f"ctrl_tcp closed during {name}")
        if not response.get("ok"):
            raise self._process.fail(f"{name} {params} failed: {response.get('data')}")
        return str(response.get("data", ""))

    def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event of this type (REGISTER_OK, CALL_INCOMING, CALL_ESTABLISHED, CALL_CLOSED…) not
        returned before; PeerError on timeout, or at once if the process died."""
        def find() -> dict[str, Any] | None:
            for i, event in enumerate(self.events):
                if i not in self._taken and event.get("type") == kind:
                    self._taken.add(i)
                    return event
            return None

        with self._cond:
            event = self._cond.wait_for(lambda: find() or (not self._process.alive() and "dead"), timeout)
        if not isinstance(event, dict):
            seen = ", ".join(e.get("type", "?") for e in self.events) or "none"
            state = "exited" if event == "dead" else f"timed out after {timeout:.0f} s"
            raise self._process.fail(f"{state} waiting for {kind} (events so far: {seen})")
        return event

    def registered(self) -> bool:
        """Whether the account's registration is up (asked with reginfo: the REGISTER_OK event may come
        before ctrl_tcp is connected)."""
        text = re.sub(r"\x1b\[[0-9;]*m", " ", self.command("reginfo"))  # drop the colours
        return any(self.aor in line and re.search(r"\bOK\b", line) for line in text.splitlines())

    def wait_registered(self, timeout: float = 10.0) -> None:
        try:
            wait_until(self.registered, timeout, f"{self.aor} to register", step=0.1)
        except PeerError as exc:
            raise self._process.fail(str(exc)) from None

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def hangup(self) -> None:
        self.command("hangup")

    def send_dtmf(self, digits: str) -> None:
        """RFC 4733 telephone-events in the current call, one command per digit."""
        for digit in digits:
            self.command("sndcode", digit)

    def recordings(self, direction: str = "dec") -> list[Path]:
        """Every recorded WAV, oldest first: "dec" what it heard, "enc" what it sent."""
        return sorted(self.recordings_dir.glob(f"dump-*-{direction}.wav"), key=lambda p: p.stat().st_mtime)

    def stop(self) -> None:
        with self._cond:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._process.stop(grace=3.0)
        if self._reader is not None:
            self._reader.join(2.0)

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
