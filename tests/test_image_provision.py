"""What an image runs at boot, off the image: first-boot provisioning (device key, enrolment token and SSH key
adopted from the boot partition, the first API key shown once) and the health gate of boot assessment (its
verdict from the unit's state and a real /health over HTTP)."""

from __future__ import annotations

import json
import shutil
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from appliance.api.keys import KeyStore
from appliance.image import health
from appliance.image.provision import device_identity, provision
from tests.support.cli import appliance


def boot_partition(tmp: Path) -> Path:
    boot = tmp / "efi"
    (boot / "appliance").mkdir(parents=True)
    (boot / "appliance" / "enrolment.token").write_text("enrol-7f3a9c\n")
    (boot / "appliance" / "authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB technician\n")
    return boot


def test_first_boot_adopts_the_boot_partitions_files_and_runs_once(tmp_path: Path) -> None:
    state, ssh = tmp_path / "state", tmp_path / "ssh"
    boot = boot_partition(tmp_path)
    made = []
    done = provision(state, boot, lambda: made.append(1) or "ak_x_y", ssh_dir=ssh, user="no-such-user")
    assert done is not None and done.enrolled and done.ssh and done.api_key == "ak_x_y"
    assert len(done.device_id) == 16 and done.device_id == device_identity(state)  # the same key next time
    token = state / "fleet" / "enrolment.token"
    assert token.read_text() == "enrol-7f3a9c\n" and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert not (boot / "appliance" / "enrolment.token").exists()  # a secret does not stay on the card
    assert stat.S_IMODE((state / "device" / "identity.pem").stat().st_mode) == 0o600
    assert (ssh / "authorized_keys" / "root").read_text().startswith("ssh-ed25519 ")
    if shutil.which("ssh-keygen"):
        assert (ssh / "ssh_host_ed25519_key").exists()
    record = json.loads((state / "provisioned.json").read_text())
    assert record["device_id"] == done.device_id and "api_key" not in record
    assert provision(state, boot, lambda: made.append(1) or "again", ssh_dir=ssh) is None and made == [1]


def test_without_a_boot_partition_there_is_no_enrolment_and_no_ssh(tmp_path: Path) -> None:
    done = provision(tmp_path / "state", None, lambda: "ak", ssh_dir=tmp_path / "ssh")
    assert done is not None and not done.enrolled and not done.ssh
    assert not (tmp_path / "ssh").exists()


def test_the_cli_prints_a_working_first_key_once(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").touch()
    env = {"STATE_DIRECTORY": str(tmp_path / "state"), "APPLIANCE_CONFIG": str(tmp_path / "appliance.toml")}
    first = appliance("firmware", "provision", "--boot", str(tmp_path / "no-boot"), env=env)
    assert first.returncode == 0, first.stderr
    assert "APPLIANCE-PROVISIONED device " in first.stdout
    token = first.stdout.split("API key (shown once, stored hashed): ")[1].split()[0]
    keys = KeyStore(tmp_path / "state" / "api-keys.json")
    assert keys.check(token)[0] is not None and token not in (tmp_path / "state" / "api-keys.json").read_text()
    again = appliance("firmware", "provision", env=env)
    assert again.returncode == 0 and "already provisioned" in again.stdout and "API key" not in again.stdout


def test_the_gate_waits_for_ready_then_health() -> None:
    states = iter(["activating", "activating", "active", "active"])
    checks = iter(["/health did not answer", None])
    now = [0.0]
    why = health.wait_healthy(lambda: next(states), lambda: next(checks), 60, clock=lambda: now[0],
                              sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert why is None and now[0] == 3 * health.POLL_S


def test_the_gate_fails_at_once_when_the_unit_failed_and_at_the_deadline_otherwise() -> None:
    now = [0.0]

    def tick(s: float) -> None:
        now[0] += s

    failed = health.wait_healthy(lambda: "failed", lambda: None, 600, clock=lambda: now[0], sleep=tick)
    assert failed is not None and "failed" in failed and now[0] == 0
    slow = health.wait_healthy(lambda: "active", lambda: "the supervisor is not ready", 10, clock=lambda: now[0],
                               sleep=tick)
    assert slow == "not healthy after 10 s: the supervisor is not ready"


class _Health(BaseHTTPRequestHandler):
    body: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        data = json.dumps(self.body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def serve(body: dict[str, Any]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Health,), {"body": body}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_failed_service_fails_the_gate_at_once() -> None:
    server = serve({"status": "ok", "supervisor": {"ready": True, "services": {"api": "ready", "sip": "failed"}}})
    now = [0.0]
    try:
        why = health.wait_healthy(lambda: "active", lambda: health.probe(server.server_address[1]), 600,
                                  clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    finally:
        server.shutdown()
        server.server_close()
    assert why == "services failed: sip" and now[0] == 0


@pytest.mark.parametrize(("body", "verdict"), [
    ({"status": "ok", "supervisor": {"ready": True, "services": {"api": "ready", "sip": "ready"}}}, None),
    ({"status": "ok", "supervisor": {"ready": False, "services": {"api": "starting"}}}, "the supervisor is not ready"),
    ({"status": "degraded"}, "/health says 'degraded'"),
])
def test_the_probe_reads_health_over_http(body: dict[str, Any], verdict: str | None) -> None:
    server = serve(body)
    try:
        assert health.probe(server.server_address[1]) == verdict
    finally:
        server.shutdown()
        server.server_close()
    assert health.probe(server.server_address[1], timeout_s=2).startswith("/health did not answer")
