"""One appliance under test for `appliance bench supervisor`: `appliance run` spawned in a session of its own
with a bound notify socket, on free loopback ports, killed and restarted as systemd would, measured, and
cleaned up with everything its session left behind."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import tomli_w

from appliance.api.keys import KeyStore
from appliance.bench.procs import alive, descendants, process_memory, session_members
from appliance.bench.sockets import listening, passing
from appliance.bench.supervisor_data import Boot, Kill, Notice, SupervisorBenchOptions
from appliance.errors import ApplianceError
from appliance.ports import free_ports

ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")  # ours, not the child's
POLL_S = 0.02
DESCRIBE_TIMEOUT_S = 6.0  # the Wyoming server holds a request up to 5 s for warming models, then answers Error
CLOSE_GRACE_S = 10.0  # after a failure: SIGTERM, then SIGKILL
CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
OPTIONS = ("OPTIONS sip:bench@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{mine};branch=z9hG4bK-{tag}\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag={tag}\r\nTo: <sip:bench@127.0.0.1>\r\n"
           "Call-ID: {tag}@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


async def _describes(port: int) -> bool:
    """A Wyoming server on ``port`` answers Describe with Info (an Error, "warming", is not yet)."""
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    try:
        async with asyncio.timeout(DESCRIBE_TIMEOUT_S), AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
            return event is not None and Info.is_type(event.type)
    except (OSError, TimeoutError, EOFError, ValueError):
        return False


def child_env() -> dict[str, str]:
    """This environment without what the bench sets for the child (and the caller's APPLIANCE_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_") and k not in ENV_DROP}


class SpawnedAppliance:
    """`appliance run` in a subprocess (a session of its own), restarted after each kill: its notify socket,
    output file and ports, kept across its processes."""

    def __init__(self, root: Path, passed: dict[str, Any], store: Path, options: SupervisorBenchOptions) -> None:
        root.mkdir(parents=True)
        self.root, self.store, self.options = root, store, options
        self.api, self.sip, self.stt, tts = free_ports(4)
        self.sockets = [listening(socket.SOCK_STREAM, "127.0.0.1", self.api),
                        listening(socket.SOCK_DGRAM, "127.0.0.1", self.sip),
                        listening(socket.SOCK_STREAM, "127.0.0.1", self.sip),
                        listening(socket.SOCK_STREAM, "127.0.0.1", self.stt),
                        listening(socket.SOCK_STREAM, "127.0.0.1", tts)] if options.activation else []
        config = {**passed, "models": {**passed.get("models", {}), "store": str(store)},
                  "api": {"host": "127.0.0.1", "port": self.api, "keys_file": str(root / "api-keys.json")},
                  "sip": {"host": "127.0.0.1", "port": self.sip},
                  "wyoming": {"enabled": True, "stt_uri": f"tcp://127.0.0.1:{self.stt}",
                              "tts_uri": f"tcp://127.0.0.1:{tts}"},
                  "bot": {"records_dir": str(root / "calls")}}
        self.config = root / "appliance.toml"
        self.config.write_text(tomli_w.dumps(config))
        self.argv = [sys.executable, "-m", "appliance", "--config", str(self.config), "run"]
        _, token = KeyStore(root / "api-keys.json").create("bench")  # /health shows pids only with a key
        self.notices: list[Notice] = []
        self.spawns: list[tuple[int, float]] = []  # (pid, spawned at) of each process, the current last
        self.known: set[int] = set()  # descendants seen, in case one left the session
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api}", timeout=5,
                                      headers={"Authorization": f"Bearer {token}"})
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(root / "notify"))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.output: IO[bytes] = open(root / "output.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc: asyncio.subprocess.Process | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def spawn(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.loop.add_reader(self.sock.fileno(), self._receive)
        env = child_env() | {"NOTIFY_SOCKET": str(self.root / "notify"),
                             "WATCHDOG_USEC": str(self.options.watchdog_usec)}
        started = time.monotonic()
        if self.sockets:  # as systemd with appliance.socket: the same open sockets for every process
            how = passing(self.sockets, self.argv, env)
            self.proc = await asyncio.create_subprocess_exec(
                *how.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self.output, stderr=asyncio.subprocess.STDOUT,
                env=how.env, start_new_session=True, preexec_fn=how.preexec_fn, close_fds=how.close_fds)
        else:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=self.output, stderr=asyncio.subprocess.STDOUT,
                env=env, start_new_session=True)
        self.spawns.append((self.proc.pid, started))

    def _receive(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(CREDENTIALS.size))
            except (BlockingIOError, InterruptedError):
                return
            pid = next((CREDENTIALS.unpack(raw[:CREDENTIALS.size])[0] for level, kind, raw in ancillary
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
            lines = data.decode(errors="replace").split("\n")
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            self.notices.append(Notice(time.monotonic(), pid, fields))

    def sent(self, key: str, nth: int = -1) -> list[Notice]:
        """The datagrams with ``key`` from the ``nth`` process (the current one by default)."""
        pid, started = self.spawns[nth]
        return [n for n in self.notices if key in n.fields and n.at >= started and n.pid in (None, pid)]

    def error(self, message: str) -> ApplianceError:
        self.output.flush()
        lines = (self.root / "output.log").read_text(errors="replace").splitlines()[-12:]
        return ApplianceError(f"`appliance run`: {message}; the last lines of its output:\n"
                              + "\n".join(f"  {line}" for line in lines))

    async def until(self, what: str, check: Callable[[], Any]) -> tuple[float, Any]:
        """Poll ``check`` (plain or async) until it gives a true value: when, and the value."""
        assert self.proc is not None
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            value = check()
            value = await value if inspect.isawaitable(value) else value
            if value:
                return time.monotonic(), value
            if self.proc.returncode is not None:
                raise self.error(f"exited with code {self.proc.returncode} before {what}")
            if time.monotonic() > deadline:
                raise self.error(f"no {what} within {self.options.timeout_s:g} s")
            await asyncio.sleep(POLL_S)

    async def health(self) -> dict[str, Any] | None:
        """GET /health, when the current process answers it."""
        assert self.proc is not None
        try:
            body = dict((await self.http.get("/health")).json())
        except (httpx.HTTPError, ValueError):
            return None
        return body if body.get("supervisor", {}).get("pid", self.proc.pid) == self.proc.pid else None

    async def come_up(self, since: float, wyoming: bool) -> dict[str, Any]:
        """Seconds from ``since`` to READY=1, the first /health answer, models warm and, with ``wyoming``, a
        Describe answered with Info; and the STATUS= sent with READY=1."""
        answered: list[float] = []

        async def warm() -> bool:
            health = await self.health()
            if health is not None and not answered:
                answered.append(time.monotonic())
            if health and health.get("error"):
                raise self.error(f"the models failed to load: {health['error']}")
            return bool(health and health.get("ready"))

        waits = {"ready": self.until("READY=1", lambda: self.sent("READY")),
                 "warm": self.until('models warm (GET /health "ready": true)', warm)}
        if wyoming:
            waits["wyoming"] = self.until("a Wyoming Describe answered with Info", lambda: _describes(self.stt))
        tasks = {name: asyncio.create_task(wait) for name, wait in waits.items()}
        try:
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        done: dict[str, tuple[float, Any]] = {}
        for name, result in zip(tasks, results, strict=True):  # one deadline for all: the earliest milestone missed
            if isinstance(result, BaseException):
                raise result
            done[name] = result
        ready = done["ready"][1][0]  # the first READY=1 datagram: its arrival
        out = {"ready_s": ready.at, "api_s": answered[0], **{f"{k}_s": done[k][0] for k in done if k != "ready"}}
        return {**{k: round(t - since, 3) for k, t in out.items()}, "status": ready.fields.get("STATUS", "")}

    async def boot(self) -> Boot:
        await self.spawn()
        up = await self.come_up(self.spawns[-1][1], wyoming=False)
        return Boot(str(self.store), up["ready_s"], up["api_s"], up["warm_s"], up["status"])

    async def memory(self) -> dict[str, dict[str, float]]:
        assert self.proc is not None
        health = await self.health()
        services = ((health or {}).get("supervisor") or {}).get("services", {})
        procs = {"supervisor": process_memory(self.proc.pid)}
        for name, view in services.items():
            if isinstance(view, dict) and view.get("pid") and int(view["pid"]) != self.proc.pid:
                with contextlib.suppress(OSError):  # gone meanwhile
                    procs[name] = process_memory(int(view["pid"]))
        total = {key: round(sum(m[key] for m in procs.values()), 1) for key in ("rss_mib", "rss_peak_mib")}
        if all("pss_mib" in m for m in procs.values()):
            total["pss_mib"] = round(sum(m["pss_mib"] for m in procs.values()), 1)
        return {**procs, "total": total}

    async def _ended(self, what: str) -> int:
        assert self.proc is not None
        try:
            async with asyncio.timeout(self.options.timeout_s):
                return await self.proc.wait()
        except TimeoutError:
            raise self.error(f"still running {self.options.timeout_s:g} s after {what}") from None

    def left(self) -> list[int]:
        """Processes of the appliance's sessions (or descendants seen) still running, but for the current one."""
        current = {self.proc.pid} if self.proc is not None and self.proc.returncode is None else set()
        found = session_members({pid for pid, _ in self.spawns}) | {p for p in self.known if alive(p)}
        return sorted(found - current - {os.getpid()})

    async def sweep(self) -> list[int]:
        """SIGKILL whatever `left` names (what systemd does to the rest of the cgroup); wait for them to go."""
        left = self.left()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in left) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return left

    async def kill(self, nth: int) -> Kill:
        """kill -9 of the appliance, the restart as systemd's Restart=on-failure, the new process serving."""
        assert self.proc is not None
        pid = self.proc.pid
        self.known |= descendants(pid)
        start = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        code = await self._ended("SIGKILL")
        gone = time.monotonic()
        held, sip = asyncio.create_task(self._held(start)), asyncio.create_task(self._options(start))
        left = await self.sweep()
        await asyncio.sleep(self.options.restart_sec)
        os.write(self.output.fileno(), f"--- bench: kill -9 of {pid} #{nth}, restarted ---\n".encode())
        await self.spawn()
        up = await self.come_up(start, wyoming=True)
        (held_s, held_said), (sip_s, sip_said) = await held, await sip
        return Kill(nth, pid, code, round(gone - start, 3), left, self.options.restart_sec, self.spawns[-1][0],
                    up["ready_s"], up["api_s"], up["wyoming_s"], up["warm_s"], held_s, held_said, sip_s, sip_said)

    async def _held(self, since: float) -> tuple[float | None, str]:
        """GET /health on a new connection, sent while no process serves: seconds from ``since`` to its answer,
        and the answer (or why there was none)."""
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api}",
                                         timeout=self.options.timeout_s) as client:
                answer = await client.get("/health")
        except httpx.ConnectError:
            return None, "refused"
        except httpx.HTTPError as exc:
            return None, type(exc).__name__
        return round(time.monotonic() - since, 3), f"HTTP {answer.status_code}"

    async def _options(self, since: float) -> tuple[float | None, str]:
        """One SIP OPTIONS datagram, sent (once, no retransmission) while no process serves: seconds from
        ``since`` to its answer, and the status line (or "no answer")."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not answered.done():
                    answered.set_result(data)

            def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: nobody was listening
                if not answered.done():
                    answered.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0),
                                                           remote_addr=("127.0.0.1", self.sip))
        try:
            mine = transport.get_extra_info("sockname")[1]
            transport.sendto(OPTIONS.format(port=self.sip, mine=mine, tag=os.urandom(6).hex()).encode())
            async with asyncio.timeout(self.options.timeout_s):
                data = await answered
        except (OSError, TimeoutError) as exc:
            return None, f"no answer ({exc.strerror if isinstance(exc, OSError) else 'timeout'})"
        finally:
            transport.close()
        return round(time.monotonic() - since, 3), data.split(b"\r\n", 1)[0].decode(errors="replace")

    async def stop(self, boot: Boot) -> None:
        assert self.proc is not None
        self.known |= descendants(self.proc.pid)
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        boot.exit_code = await self._ended("SIGTERM")
        boot.stop_s = round(time.monotonic() - start, 3)
        boot.outlived = self.left()
        boot.watchdog_pings = [len(self.sent("WATCHDOG", nth)) for nth in range(len(self.spawns))]

    async def close(self) -> None:
        """Whatever is left after a failure: the appliance (asked to stop, then killed) and its session."""
        if self.proc is not None and self.proc.returncode is None:
            self.known |= descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(min(CLOSE_GRACE_S, self.options.timeout_s)):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        await self.sweep()
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
        await self.http.aclose()
        self.sock.close()
        for sock in self.sockets:
            sock.close()
        self.output.close()
