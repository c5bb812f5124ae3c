"""First boot of an appliance image (`appliance firmware provision`, run once by appliance-firstboot.service):

- the device's identity: an Ed25519 key made on the device (``device/identity.pem``, 0600; its id is the first
  16 hex digits of the SHA-256 of the raw public key), which the fleet console enrols;
- the fleet enrolment token, if the user put one on the boot partition (``appliance/enrolment.token``): moved to
  ``fleet/enrolment.token`` (0600) and deleted from the boot partition, which anyone holding the card can read;
- SSH for a technician or the HIL harness, only if a public key was put on the boot partition
  (``appliance/authorized_keys``): the key adopted, and host keys made for this device alone;
- the first API key, made by the caller (it lives in the API layer) and shown once on the console.

Every step is safe to repeat (a power cut during first boot leaves a device that provisions again on the next
boot); ``provisioned.json`` is written last and the state is handed to the appliance's user.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.config.files import write_atomic
from appliance.fleet.identity import load_or_make

MARKER = "provisioned.json"
BOOT_DIR = "appliance"  # on the boot partition (the ESP)


@dataclass
class Provisioned:
    device_id: str
    enrolled: bool  # an enrolment token was adopted
    ssh: bool  # a technician's key was adopted
    api_key: str  # shown once; only its hash is kept


def device_identity(state: Path) -> str:
    """The device's id, making its key on first use."""
    return load_or_make(state).id


def adopt(source: Path, dest: Path, mode: int) -> bool:
    """Move a file the user left on the boot partition into the device's state (and off the boot partition)."""
    try:
        data = source.read_text()
    except FileNotFoundError:
        return False
    write_atomic(dest, data.strip() + "\n", mode, parents=True)
    source.unlink()
    return True


def provision(state: Path, boot: Path | None, make_api_key: Callable[[], str], ssh_dir: Path = Path("/var/lib/ssh"),
              user: str = "appliance") -> Provisioned | None:
    """Provision this device (None: it already was)."""
    if (state / MARKER).exists():
        return None
    device_id = device_identity(state)
    enrolled = ssh = False
    if boot is not None:
        enrolled = adopt(boot / BOOT_DIR / "enrolment.token", state / "fleet" / "enrolment.token", 0o600)
        ssh = adopt(boot / BOOT_DIR / "authorized_keys", ssh_dir / "authorized_keys" / "root", 0o600)
    if ssh and not (ssh_dir / "ssh_host_ed25519_key").exists() and shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"appliance-{device_id}",
                        "-f", str(ssh_dir / "ssh_host_ed25519_key")], check=True, timeout=60)
    done = Provisioned(device_id, enrolled, ssh, make_api_key())
    record = {k: v for k, v in asdict(done).items() if k != "api_key"} | {"at": time.time()}
    write_atomic(state / MARKER, json.dumps(record, indent=1), 0o644)
    _give(state, user)
    return done


def _give(state: Path, user: str) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # not an image (a test, a developer's machine): the files stay the caller's
    for path in [state, *state.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
