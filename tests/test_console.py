"""The fleet console's core: its database on SQLite and on a real PostgreSQL server (migrated schema equal to
the tables), users and roles (every route per role), one-time enrolment tokens (single use, expiry), devices
enrolled by their key and then heard only through signed requests (a revoked one refused at once), the
inventory, and the hash-chained audit log (tampering found)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.bench.postgres import BIN, postgres_server
from appliance.console import accounts, audit
from appliance.console.app import make_app
from appliance.console.authority import EnrolmentError, enrol, load_or_make, make_token
from appliance.console.db import head, make_engine, open_database, revision, transaction
from appliance.console.schema import AuditEntry, Base, Device, EnrolmentToken
from appliance.fleet.enrolment import ConsoleError, enrolled, report
from appliance.fleet.enrolment import enrol as device_enrol
from appliance.fleet.identity import IdentityError, verify
from appliance.fleet.identity import load_or_make as device_key
from tests.support.cli import appliance

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'console.db'}"
        return
    if BIN is None:
        pytest.skip("needs PostgreSQL (Debian postgresql; make test installs it)")
    with postgres_server(tmp_path / "pg") as url:
        yield url


@pytest.fixture()
def console(database: str, tmp_path: Path) -> Iterator[tuple[TestClient, sessionmaker[Session]]]:
    sessions = open_database(database)
    with transaction(sessions) as session:
        for role in accounts.ROLES:
            accounts.add_user(session, role, role, PASSWORD)
    with TestClient(make_app(sessions, load_or_make(tmp_path / "state"))) as client:
        yield client, sessions
    sessions.kw["bind"].dispose()


def login(client: TestClient, name: str) -> dict[str, str]:
    reply = client.post("/api/v1/login", json={"name": name, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


def test_the_migrated_schema_is_the_tables_on_both_databases(database: str) -> None:
    engine = make_engine(database)
    assert revision(engine) is None
    open_database(database)
    assert revision(engine) == head()
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        if engine.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_a_device_enrols_once_reports_signed_and_a_revoked_one_is_refused(
        console: tuple[TestClient, sessionmaker[Session]], tmp_path: Path) -> None:
    client, _ = console
    admin = login(client, "admin")
    token = client.post("/api/v1/enrolment-tokens", json={"group": "lobby"}, headers=admin).json()["token"]
    key = device_key(tmp_path / "device")
    fleet = tmp_path / "device" / "fleet"
    answer = device_enrol("http://testserver", key, fleet, client, token)
    assert answer["device_id"] == key.id and enrolled(fleet)["device_id"] == key.id  # type: ignore[index]
    with pytest.raises(ConsoleError, match="used already"):  # single-use
        device_enrol("http://testserver", device_key(tmp_path / "other"), tmp_path / "other" / "fleet", client, token)

    report("http://testserver", key, {"profile": "generic-x86_64", "version": "0.1.0", "slot": "a",
                                      "health": "ok", "calls": 2}, client)
    viewer = login(client, "viewer")
    [listed] = client.get("/api/v1/devices", params={"group": "lobby"}, headers=viewer).json()
    assert listed["id"] == key.id and listed["calls"] == 2 and listed["last_seen"] and listed["slot"] == "a"
    assert client.get("/api/v1/devices", params={"q": "generic-x86"}, headers=viewer).json()[0]["id"] == key.id
    assert client.get("/api/v1/devices", params={"group": "kitchen"}, headers=viewer).json() == []
    operator = login(client, "operator")
    placed = client.post(f"/api/v1/devices/{key.id}/placement", json={"group": "lobby", "tags": ["kiosk"]},
                         headers=operator)
    assert placed.json()["tags"] == ["kiosk"]
    def found(**params: str) -> list[str]:
        return [d["id"] for d in client.get("/api/v1/devices", params=params, headers=viewer).json()]

    assert found(tag="kiosk") == found(q="GENERIC-X86", group="lobby", tag="kiosk") == [key.id]
    # whole tags only; % and _ are no wildcards
    assert found(tag="kio") == found(tag="tags") == found(q="%") == found(q="generic_x86") == []

    forged = device_key(tmp_path / "forger")  # signs with its own key, claims the device's id
    body = b"{}"
    headers = {**forged.sign("POST", "/api/v1/device/report", body), "X-Appliance-Device": key.id}
    assert client.post("/api/v1/device/report", content=body, headers=headers).status_code == 401

    assert client.post(f"/api/v1/devices/{key.id}/revoke", headers=admin).status_code == 200
    with pytest.raises(ConsoleError, match="403.*revoked"):
        report("http://testserver", key, {"health": "ok"}, client)
    again = client.post("/api/v1/enrolment-tokens", json={}, headers=admin).json()["token"]
    with pytest.raises(ConsoleError, match="revoked: its key cannot enrol again"):
        device_enrol("http://testserver", key, fleet, client, again)


def test_tokens_expire_and_unknown_ones_are_refused(console: tuple[TestClient, sessionmaker[Session]],
                                                    tmp_path: Path) -> None:
    _, sessions = console
    authority = load_or_make(tmp_path / "state")
    key = device_key(tmp_path / "device")
    with transaction(sessions) as session:
        token = make_token(session, "test", None, timedelta(hours=1))
        session.execute(update(EnrolmentToken).values(expires=datetime.now(UTC) - timedelta(seconds=1)))
    with transaction(sessions) as session, pytest.raises(EnrolmentError, match="expired"):
        enrol(session, authority, token, key.public_raw.hex())
    with transaction(sessions) as session, pytest.raises(EnrolmentError, match="unknown"):
        enrol(session, authority, "et_nothing", key.public_raw.hex())
    with transaction(sessions) as session, pytest.raises(EnrolmentError, match="hex of a raw Ed25519"):
        enrol(session, authority, token, "zz")


def test_a_signature_is_bound_to_method_path_body_and_time(tmp_path: Path) -> None:
    key = device_key(tmp_path)
    headers = key.sign("POST", "/api/v1/device/report?x=1", b"body", now=1_000_000)
    verify(key.public_raw.hex(), headers, "POST", "/api/v1/device/report?x=1", b"body", now=1_000_100)
    for method, target, body, now in [("GET", "/api/v1/device/report?x=1", b"body", 1_000_000),
                                      ("POST", "/api/v1/device/report?x=2", b"body", 1_000_000),
                                      ("POST", "/api/v1/device/report?x=1", b"bodY", 1_000_000)]:
        with pytest.raises(IdentityError, match="does not verify"):
            verify(key.public_raw.hex(), headers, method, target, body, now)
    with pytest.raises(IdentityError, match="off the console's clock"):
        verify(key.public_raw.hex(), headers, "POST", "/api/v1/device/report?x=1", b"body", now=1_000_301)
    (tmp_path / "device" / "identity.pem").write_text("not a key")
    with pytest.raises(IdentityError, match="not a readable private key"):
        device_key(tmp_path)


ROUTES = [  # method, path, body, the least role that may
    ("GET", "/api/v1/devices", None, "viewer"),
    ("GET", "/api/v1/devices/nobody", None, "viewer"),
    ("POST", "/api/v1/devices/nobody/placement", {"group": "g"}, "operator"),
    ("POST", "/api/v1/devices/nobody/revoke", None, "admin"),
    ("POST", "/api/v1/enrolment-tokens", {}, "admin"),
    ("GET", "/api/v1/users", None, "admin"),
    ("POST", "/api/v1/users", {"name": "x", "role": "viewer", "password": "short"}, "admin"),
    ("GET", "/api/v1/audit", None, "admin"),
]


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_every_route_needs_its_role(console: tuple[TestClient, sessionmaker[Session]]) -> None:
    client, _ = console
    assert client.get("/health").json() == {"status": "ok"}
    tokens = {role: login(client, role) for role in accounts.ROLES}
    for method, path, body, least in ROUTES:
        assert client.request(method, path, json=body).status_code == 401, path
        assert client.request(method, path, json=body, headers={"Authorization": "Bearer ct_wrong"}).status_code == 401
        for role in accounts.ROLES:
            status = client.request(method, path, json=body, headers=tokens[role]).status_code
            allowed = accounts.rank(role) >= accounts.rank(least)
            assert (status != 403) == allowed and status != 401, (method, path, role, status)
    assert client.post("/api/v1/login", json={"name": "admin", "password": "wrong password!"}).status_code == 401
    assert client.post("/api/v1/login", json={"name": "nobody", "password": PASSWORD}).status_code == 401


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_audit_chain_finds_a_changed_or_removed_entry(console: tuple[TestClient, sessionmaker[Session]],
                                                          database: str) -> None:
    client, sessions = console
    admin = login(client, "admin")
    for group in ("a", "b", "c"):
        client.post("/api/v1/enrolment-tokens", json={"group": group}, headers=admin)
    with transaction(sessions) as session:
        assert audit.check(session) == []
        actions = [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == ["login", "enrolment-token.add", "enrolment-token.add", "enrolment-token.add"]
    env = {"APPLIANCE_CONSOLE__DATABASE": database}
    assert appliance("console", "audit-check", env=env).returncode == 0
    with transaction(sessions) as session:  # someone edits a row in the database
        session.execute(update(AuditEntry).where(AuditEntry.id == 2).values(detail={"ttl_s": 60}))
    done = appliance("console", "audit-check", env=env)
    assert done.returncode == 1 and "entry 2 (enrolment-token.add by admin): its fields do not match" in done.stderr
    with transaction(sessions) as session:
        session.execute(text("DELETE FROM audit_log WHERE id = 2"))
        problems = audit.check(session)
    assert any("entry 3: follows" in p and "removed or reordered" in p for p in problems), problems


def test_the_console_cli_makes_users_and_tokens_and_says_what_is_wrong(tmp_path: Path) -> None:
    env = {"APPLIANCE_CONSOLE__STATE_DIR": str(tmp_path / "console")}
    assert f"empty -> {head()}" in appliance("console", "migrate", env=env).stdout
    done = appliance("console", "user", "ops", "--role", "operator", "--password-stdin", env=env)
    assert done.returncode != 0 and "at least 12 characters" in done.stderr  # stdin is empty
    token = appliance("console", "enrolment-token", "--group", "lobby", "--hours", "1", env=env)
    assert token.returncode == 0 and token.stdout.startswith("et_")
    bad = appliance("console", "migrate", env={"APPLIANCE_CONSOLE__DATABASE": "postgresql+psycopg://u:secret@/x?host=/nonexistent"})
    assert bad.returncode != 0 and "secret" not in bad.stdout + bad.stderr and "***" in bad.stderr
    with transaction(open_database(f"sqlite:///{tmp_path / 'console' / 'console.db'}")) as session:
        assert [e.action for e in session.scalars(select(AuditEntry))] == ["enrolment-token.add"]
        assert session.scalar(select(Device)) is None


def test_the_first_start_makes_an_admin_once(tmp_path: Path) -> None:
    from appliance.cli.console_cmd import bootstrap

    sessions = open_database(f"sqlite:///{tmp_path / 'console.db'}")
    password = bootstrap(sessions)
    assert password and bootstrap(sessions) is None
    with transaction(sessions) as session:
        user = accounts.check_password(session, "admin", password)
        assert user is not None and user.role == "admin"


def test_concurrent_audit_appends_keep_one_chain(database: str) -> None:
    sessions = open_database(database)

    def append(worker: int) -> None:
        for n in range(10):
            with transaction(sessions) as session:
                audit.record(session, f"worker-{worker}", "test.append", f"n:{n}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append, range(8)))
    with transaction(sessions) as session:
        assert audit.check(session) == [] and len(list(session.scalars(select(AuditEntry)))) == 80
    sessions.kw["bind"].dispose()


def test_the_agent_cli_enrols_and_reports_to_a_running_console(tmp_path: Path) -> None:
    import httpx

    from tests.support.console import Console

    with Console(tmp_path / "console") as console:
        admin = console.token("admin")
        token = httpx.post(f"{console.url}/api/v1/enrolment-tokens", json={"group": "lobby"}, headers=admin).json()
        env = {"STATE_DIRECTORY": str(tmp_path / "data"), "APPLIANCE_FLEET__CONSOLE": console.url}
        done = appliance("agent", "enrol", "--token", token["token"], env=env)
        assert done.returncode == 0 and "enrolled at" in done.stdout, done.stderr
        device_id = done.stdout.split()[-1]
        assert appliance("agent", "report", env=env).returncode == 0
        shown = httpx.get(f"{console.url}/api/v1/devices/{device_id}", headers=admin).json()
        assert shown["group"] == "lobby" and shown["report"]["hardware"]["cpu"]["cores"] >= 1
        assert "health" not in shown["report"] and shown["report"]["installed"] == {"model": {}, "config": {},
                                                                                     "firmware": {}}
        again = appliance("agent", "enrol", "--token", token["token"], env=env)
        assert again.returncode != 0 and "used already" in again.stderr
