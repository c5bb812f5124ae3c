"""Socket activation: sockets passed as systemd passes them (appliance.bench.sockets, the same path as `bench
supervisor`) are found by address by a real child, and `appliance run` serves on them, so that what arrives
while it is killed and started again waits instead of being refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.bench.sockets import listening, passing
from appliance.bench.supervisor_data import SupervisorBenchOptions
from appliance.ports import free_ports
from appliance.supervisor.activation import Activation, ActivationError

CHILD = textwrap.dedent("""
    import json, os, socket, sys
    from appliance.supervisor.activation import Activation
    tcp_port, udp_port = int(sys.argv[1]), int(sys.argv[2])
    act = Activation.from_environ()
    api = act.stream("127.0.0.1", tcp_port)
    wrong = [act.stream("127.0.0.1", udp_port + 1), act.stream("0.0.0.0", tcp_port), act.datagram("127.0.0.1",
             tcp_port), act.stream("127.0.0.1", 0)]
    sip = act.datagram("127.0.0.1", udp_port)
    api.listen()
    print(json.dumps({"api": api.getsockname()[1], "sip": sip.getsockname()[1], "wrong": [w is not None for w in wrong],
                      "unused": act.unused(), "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
                      "inheritable": [os.get_inheritable(fd) for fd in (3, 4, 5)]}), flush=True)
    conn, _ = api.accept()  # a connection the parent made before this process existed
    conn.sendall(conn.recv(100).upper())
    data, peer = sip.recvfrom(100)  # a datagram the parent sent before this process existed
    sip.sendto(data.upper(), peer)
""")


def test_a_child_takes_the_passed_sockets_by_address_and_what_came_before_it_waits(tmp_path: Path) -> None:
    tcp_port, udp_port, spare = free_ports(3)
    sockets = [listening(socket.SOCK_STREAM, "127.0.0.1", tcp_port), listening(socket.SOCK_DGRAM, "127.0.0.1",
                                                                                 udp_port),
               listening(socket.SOCK_STREAM, "127.0.0.1", spare)]
    early = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)  # queued in the kernel: no process yet
    early.sendall(b"hello")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(10)
    udp.sendto(b"ping", ("127.0.0.1", udp_port))
    how = passing(sockets, [sys.executable, "-c", CHILD, str(tcp_port), str(udp_port)], dict(os.environ))
    try:
        child = subprocess.Popen(how.argv, env=how.env, preexec_fn=how.preexec_fn, close_fds=how.close_fds,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        seen = json.loads(child.stdout.readline())
        assert early.recv(100) == b"HELLO"
        assert udp.recvfrom(100)[0] == b"PING"
        assert child.wait(timeout=30) == 0
    finally:
        early.close()
        udp.close()
        for sock in sockets:
            sock.close()
    assert seen["api"] == tcp_port and seen["sip"] == udp_port
    # another port, another address (0.0.0.0 is not 127.0.0.1), another type, port 0: not passed
    assert seen["wrong"] == [False, False, False, False]
    assert seen["unused"] == [f"127.0.0.1:{spare}/tcp (appliance.socket)"]
    assert seen["env"] == []  # cleared: a child of the appliance does not take them for its own
    assert seen["inheritable"] == [False, False, False]


def test_sockets_meant_for_another_process_or_a_broken_count() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b"}
    assert Activation.from_environ(env).passed == [] and env == {}  # systemd's LISTEN_PID check; cleared anyway
    assert Activation.from_environ({}).passed == []
    with pytest.raises(ActivationError, match="not a number"):
        Activation.from_environ({"LISTEN_FDS": "two", "LISTEN_PID": str(os.getpid())})


def test_the_appliance_keeps_its_ports_across_a_kill_9(tmp_path: Path) -> None:
    """`appliance run` (empty model store) under the supervisor bench, killed once with socket activation and once
    without: with it, a GET and a SIP OPTIONS sent while no process runs are answered by the next one."""
    import asyncio

    from appliance.bench.spawned import SpawnedAppliance

    outcomes = {}
    for activation in (True, False):
        options = SupervisorBenchOptions(repeat=1, kills=1, idle_s=0, baseline_boot=False, timeout_s=60,
                                         activation=activation)

        async def once(app: SpawnedAppliance) -> tuple[str, float | None, str, float | None, float]:
            try:
                await app.boot()
                kill = await app.kill(1)
                return kill.held, kill.held_s, kill.sip, kill.sip_s, kill.ready_s
            finally:
                await app.close()

        root = tmp_path / str(activation)
        outcomes[activation] = asyncio.run(once(SpawnedAppliance(root, {}, tmp_path / "empty", options)))
        log = (root / "output.log").read_text()
        assert "systemd passed sockets that no service listens on" not in log, log
    held, held_s, sip, sip_s, ready_s = outcomes[True]
    assert held == "HTTP 200" and sip == "SIP/2.0 200 OK", outcomes
    assert held_s is not None and sip_s is not None and held_s < ready_s + 5, outcomes
    held, held_s, sip, sip_s, _ = outcomes[False]
    assert held == "refused" and held_s is None, outcomes
    assert sip.startswith("no answer") and sip_s is None, outcomes
    print(f"\nkill -9 with socket activation: GET answered {outcomes[True][1]:.2f} s, OPTIONS "
          f"{outcomes[True][3]:.2f} s after the kill (READY=1 {outcomes[True][4]:.2f} s); without: {outcomes[False]}")
