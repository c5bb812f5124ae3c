"""The x86-kiosk image booted for real in QEMU (TCG, OVMF, systemd-boot, QEMU's standard VGA card as its
screen): besides the appliance READY and healthy, the kiosk page on the device's own screen. cage and
Chromium start on tty1 as the `kiosk` user, sign in with the one-time link made at their start (nobody types
a key), and load the page: the device counts the page's own authenticated request for its configuration, and
the screen (QEMU's screendump of the card) shows the page's colours and its Start button, not a console. From
the host, through the port forward, the same page asks a browser for a key.

The build shares the wheelhouse with generic-x86_64 (build/image-cache) and has its own tree (Chromium)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from appliance.image.boards import load_board
from appliance.image.build import Built
from appliance.image.qemu import Guest, command, screendump
from appliance.ports import free_port
from tests.support.images import BOOTS, built_image

BOARD = load_board("x86-kiosk")
BOOT_S = 900  # TCG on two cores, as in test_image_boot
SCREEN_S = 600  # then cage and Chromium, rendering in software under TCG
BACKGROUND, ACCENT = (0x0D, 0x11, 0x17), (0x2F, 0x81, 0xF7)  # kiosk.css: --bg, --accent (the Start button)
DISABLED = (0x1B, 0x3E, 0x71)  # button:disabled: the accent at opacity 0.4 over the background

pytestmark = BOOTS


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    for made in built_image(BOARD, tmp_path_factory):
        made.bundle.unlink()  # only slot a boots here: the bundle's gigabytes go at once
        yield made


def read_ppm(path: Path) -> np.ndarray:
    """A binary PPM (P6, 8-bit) as an array of RGB pixels."""
    data = path.read_bytes()
    fields = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    assert fields, data[:20]
    width, height = int(fields[1]), int(fields[2])
    return np.frombuffer(data[fields.end():], np.uint8, width * height * 3).reshape(-1, 3)


def share(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    return float(np.mean(np.all(np.abs(pixels.astype(int) - colour) <= 6, axis=1)))


# The page asks /kiosk/config as soon as it loads: 200 once the voice models are warm, 503 with Retry-After (the
# page then says the device is starting) while they warm. Either answer proves the page is up on the screen and
# signed in. Under TCG the models may not be warm within SCREEN_S: the Whisper smoke inferences (30 s windows)
# run ~300x slower than on the host while Chromium renders in software on the same two emulated cores.
CONFIG = re.compile(r'appliance_http_requests_total\{route="/kiosk/config",status="(200|503)"\}')


def test_the_kiosk_page_is_on_the_devices_own_screen(built: Built, tmp_path: Path) -> None:
    packages = {p.split("=")[0] for p in json.loads(built.manifest.read_text())["packages"]}
    assert {"cage", "chromium"} <= packages
    qmp, api = tmp_path / "qmp.sock", free_port()
    with Guest(command(built.image, forwards={api: 8080}, qmp=qmp)) as guest:
        guest.wait_for("APPLIANCE-SLOT a UP", BOOT_S)
        found = re.search(r"API key \(shown once, stored hashed\): (ak_\S+)", "\n".join(guest.lines))
        assert found, "\n".join(guest.lines[-40:])
        deadline, metrics = time.monotonic() + SCREEN_S, ""
        while not CONFIG.search(metrics) and time.monotonic() < deadline:
            time.sleep(5)
            metrics = httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=60,
                                headers={"Authorization": f"Bearer {found[1]}"}).text
        asked = CONFIG.search(metrics)
        assert asked, "the screen's browser never loaded the kiosk page: " + "\n".join(guest.lines[-30:])
        print(f"\n/kiosk/config answered the screen's page {asked[1]}"
              f" ({'models warm' if asked[1] == '200' else 'models still warming'})")
        assert 'route="/kiosk/login",status="303"' in metrics  # signed in by the one-time link
        time.sleep(10)  # let the page paint
        pixels = read_ppm(screendump(qmp, tmp_path / "screen.ppm"))
        button = ACCENT if asked[1] == "200" else DISABLED  # no languages yet: the Start button is disabled
        assert share(pixels, BACKGROUND) > 0.5 and share(pixels, button) > 0.001, (
            share(pixels, BACKGROUND), share(pixels, button))
        page = httpx.get(f"http://127.0.0.1:{api}/kiosk", timeout=60)
        assert page.status_code == 200 and 'name="key"' in page.text  # another browser still needs a key
