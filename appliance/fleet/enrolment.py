"""The device's side of the fleet console: enrolment, inventory reports and the assignment the agent follows.

``enrol`` sends the one-time token (given, or the one first-boot provisioning moved to
``fleet/enrolment.token``) with the device's public key; the console answers with a certificate for that key
and its CA, which are kept in ``fleet/console.json`` while the spent token is deleted. ``report`` sends what the
device is (profile, versions, slot, health, live calls) as a request signed with the device key.
``ConsoleLink`` is what the update agent holds once the device is enrolled: the pins it asks for before each
check, and after it the report (installed and refused targets, the agent's state, whatever ``facts`` adds) and
the telemetry (``telemetry``: a sample and the agent's new events, through the on-disk outbox)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from appliance.config.files import write_atomic
from appliance.errors import ApplianceError
from appliance.fleet.identity import DeviceKey
from appliance.fleet.telemetry import Outbox, sample, scrub

if TYPE_CHECKING:
    from appliance.fleet.state import AgentState

log = logging.getLogger(__name__)
TOKEN_FILE, CONSOLE_FILE = "enrolment.token", "console.json"


class ConsoleError(ApplianceError):
    """The console refused or could not be reached; the message says which and its reason."""


def _refusal(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("detail", reply.text))
    except ValueError:
        return reply.text[:300]


def enrol(url: str, key: DeviceKey, fleet_state: Path, client: httpx.Client, token: str | None = None
          ) -> dict[str, Any]:
    """Enrol at the console at ``url``; what it answered (device id, certificate, CA)."""
    token_path = fleet_state / TOKEN_FILE
    if token is None:
        try:
            token = token_path.read_text().strip()
        except FileNotFoundError as exc:
            raise ConsoleError(f"no enrolment token: give one, or put it in {token_path}") from exc
    try:
        reply = client.post(f"{url.rstrip('/')}/api/v1/enrol",
                            json={"token": token, "public_key": key.public_raw.hex()})
    except httpx.HTTPError as exc:
        raise ConsoleError(f"the console at {url} cannot be reached: {exc}") from exc
    if reply.status_code != 201:
        raise ConsoleError(f"the console refused the enrolment ({reply.status_code}): {_refusal(reply)}")
    answer = dict(reply.json())
    if answer.get("device_id") != key.id:
        raise ConsoleError(f"the console enrolled {answer.get('device_id')!r}, not this device ({key.id})")
    write_atomic(fleet_state / CONSOLE_FILE, json.dumps({"url": url, **answer}, indent=1), 0o644, parents=True)
    token_path.unlink(missing_ok=True)
    return answer


def enrolled(fleet_state: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((fleet_state / CONSOLE_FILE).read_text()))
    except (FileNotFoundError, ValueError):
        return None


def signed(client: httpx.Client, key: DeviceKey, url: str, method: str, path: str,
           payload: dict[str, Any] | None = None, expect: int = 200) -> httpx.Response:
    """A request to the console signed with the device key; ConsoleError unless it answers ``expect``."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    headers = {**key.sign(method, path, body), **({"Content-Type": "application/json"} if body else {})}
    try:
        reply = client.request(method, f"{url.rstrip('/')}{path}", content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ConsoleError(f"the console at {url} cannot be reached: {exc}") from exc
    if reply.status_code != expect:
        raise ConsoleError(f"the console refused {method} {path} ({reply.status_code}): {_refusal(reply)}")
    return reply


def report(url: str, key: DeviceKey, inventory: dict[str, Any], client: httpx.Client) -> None:
    """Send the device's inventory, signed."""
    signed(client, key, url, "POST", "/api/v1/device/report", inventory, expect=204)


@dataclass
class ConsoleLink:
    url: str
    key: DeviceKey
    client: httpx.Client
    facts: Callable[[], dict[str, Any]] = field(default=lambda: {})  # profile, version, health, calls, slot
    outbox: Outbox | None = None  # telemetry waiting for the console
    metrics: Callable[[], dict[str, Any]] = field(default=lambda: {})  # the numbers of a telemetry sample
    share_transcripts: bool = False

    def pins(self) -> dict[str, int]:
        answer = signed(self.client, self.key, self.url, "GET", "/api/v1/device/assignment").json()
        return {str(name): int(version) for name, version in (answer.get("pins") or {}).items()}

    def _upload(self, batch: dict[str, Any]) -> None:
        signed(self.client, self.key, self.url, "POST", "/api/v1/device/telemetry", batch, expect=204)

    def send(self, state: AgentState, events: list[dict[str, Any]] | None = None) -> None:
        """Report after a check, and upload the telemetry (a sample now and ``events``, the agent's new ones);
        a console that cannot be reached is logged, not fatal: the report goes next time, the telemetry waits in
        the outbox."""
        facts = self.facts()
        inventory = {**facts, "installed": state.installed(), "refused": sorted(state.refused()),
                     "agent": asdict(state.status())}
        if self.outbox is not None:
            numbers = {**facts, **self.metrics(), "update_errors": int(bool(state.status().last_error))}
            self.outbox.put({"samples": [sample(numbers)],
                             "events": scrub(events or [], self.share_transcripts)})
        try:
            report(self.url, self.key, scrub(inventory, self.share_transcripts), self.client)
            if self.outbox is not None:
                self.outbox.flush(self._upload)
        except ConsoleError as exc:
            log.warning("inventory or telemetry not sent: %s", exc)
