"""A GGUF chat model served by llama.cpp's own HTTP server (xllamacpp's prebuilt wheel: no compiling), in a
child process of its own, so that a crash or a hang of the native server never takes the gateway with it.

The child listens on loopback only, with a key of its own made at each start (passed in the environment, never
on the command line); the gateway in front of it is what clients reach. ``python -m appliance.upstream.llama``
is the child's entry point.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from appliance.errors import ApplianceError
from appliance.ports import free_port

KEY_ENV = "APPLIANCE_LLAMA_KEY"


class LlamaError(ApplianceError):
    """The llama.cpp server could not start or stopped; the message holds the last lines of its log."""


class LlamaServer:
    """``model`` (a GGUF file) served on ``127.0.0.1:port`` by a child process; ``start`` waits for /health."""

    def __init__(self, model: Path, log: Path, threads: int = 2, ctx: int = 2048, parallel: int = 2,
                 port: int = 0) -> None:
        self.model, self.log, self.threads, self.ctx, self.parallel = model, log, threads, ctx, parallel
        self.port = port or free_port()
        self.key = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LlamaServer({self.model.name!r}, port={self.port})"  # no key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_s: float = 180.0) -> LlamaServer:
        if not self.model.is_file():
            raise LlamaError(f"no model file at {self.model} (provision it: appliance models pull ID)")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:  # a file, not a pipe: a full pipe would stall the server
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "appliance.upstream.llama", str(self.model), "--port", str(self.port),
                 "--threads", str(self.threads), "--ctx", str(self.ctx), "--parallel", str(self.parallel)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, KEY_ENV: self.key})
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise LlamaError(f"the llama.cpp server for {self.model.name} exited: {self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LlamaError(f"the llama.cpp server for {self.model.name} was not ready in {ready_s:g} s: {self.tail()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def tail(self, lines: int = 6) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.upstream.llama")
    parser.add_argument("model", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(args.model)
    params.hostnames, params.port = ["127.0.0.1"], args.port
    params.api_keys = [os.environ.get(KEY_ENV) or secrets.token_urlsafe(24)]
    params.n_ctx, params.n_parallel = args.ctx, args.parallel
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    _die_with_parent()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = xllamacpp.Server(params)  # serves on its own threads
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server
    return 0


def _die_with_parent() -> None:
    """SIGTERM when the gateway dies, even by SIGKILL: no orphaned server keeps the port and the memory."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was gone before the call
            sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
