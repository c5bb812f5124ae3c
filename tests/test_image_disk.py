"""Disk images from partition files (no mount, no loop device) and the A/B slot entries on their ESP: the
GPT read back by sfdisk, each filesystem checked by its own fsck and read by debugfs/mtools, a rebuild
byte-identical, the block map, and slot switching, blessing and rollback on the ESP inside the image and on
a mounted-style directory alike."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from appliance.image import slots
from appliance.image.boards import ESP, ROOT, VAR, BoardError, load_board
from appliance.image.disk import bmap, derived_uuid, make_filesystem, partitions, read_at
from appliance.image.qemu import image_arch
from tests.support.images import SMALL, build, tiny_boards


@pytest.fixture
def boards(tmp_path: Path) -> Path:
    return tiny_boards(tmp_path / "boards")


def test_an_image_is_assembled_from_partition_files_and_reads_back(tmp_path: Path, boards: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    image, placed = build(tmp_path, boards, "one")
    table = partitions(image)
    assert [p.name for p in table] == ["esp", "root-a", "root-b", "data"]
    assert [p.type for p in table] == [ESP, ROOT["amd64"], ROOT["amd64"], VAR]
    assert image_arch(image) == "amd64"  # what `appliance image boot` boots it with
    assert [(p.start, p.size, p.uuid) for p in table] == [(p.start, p.size, p.uuid) for p in placed]
    assert table[0].start == 1 << 20 and all(p.start % (1 << 20) == 0 for p in table)

    root = read_at(image, placed[1].start, placed[1].size, tmp_path / "root-a.ext4")
    check = subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    cat = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(root)], capture_output=True, text=True)
    assert cat.stdout == "appliance\n"
    esp = read_at(image, placed[0].start, placed[0].size, tmp_path / "esp.vfat")
    fsck = subprocess.run(["fsck.vfat", "-n", str(esp)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert slots.ImageEsp(image, placed[0].start).list("EFI/BOOT") == ["BOOTX64.EFI"]

    blocks = ElementTree.parse(bmap(image)).getroot()
    mapped, total = int(blocks.findtext("MappedBlocksCount") or 0), int(blocks.findtext("BlocksCount") or 0)
    assert 0 < mapped < total * 0.5  # the holes (empty root-b, free space) are not copied when flashing

    again, _ = build(tmp_path, boards, "two")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(image.read_bytes()).hexdigest()


def test_a_board_file_is_checked(boards: Path) -> None:
    bad = dict(SMALL, layout=SMALL["layout"][:3])
    (boards / "broken.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(BoardError, match="layout must be esp, root-a, root-b, data"):
        load_board("broken", boards)
    with pytest.raises(BoardError, match="no board called 'nope'.*tiny-x86"):
        load_board("nope", boards)
    assert load_board("generic-x86_64").profile == "generic-x86_64"  # the shipped one


@pytest.fixture(params=["image", "directory"])
def esp(request: pytest.FixtureRequest, tmp_path: Path, boards: Path) -> slots.Esp:
    if request.param == "directory":
        return slots.DirEsp(tmp_path / "efi")
    board = load_board("tiny-x86", boards)
    part = make_filesystem(board.layout[0], tmp_path / "esp.vfat", None, derived_uuid("esp"))
    return slots.ImageEsp(part)


def test_a_new_slot_is_tried_then_blessed_or_falls_behind_the_old_one(esp: slots.Esp) -> None:
    slots.write_entry(esp, "a", 1, b"kernel-1", b"initrd-1", "console=ttyS0", tries=0)  # the factory slot: good
    assert [(e.slot, e.state) for e in slots.boot_order(esp)] == [("a", "good")]
    assert esp.read("loader/loader.conf").decode().splitlines()[1] == "default appliance-*"

    tried = slots.write_entry(esp, "b", 2, b"kernel-2", b"initrd-2", "console=ttyS0")
    assert tried.file == "appliance-0002-b+3.conf"
    assert [(e.slot, e.state) for e in slots.boot_order(esp)] == [("b", "trying"), ("a", "good")]
    body = esp.read(f"{slots.ENTRIES}/{tried.file}").decode()
    assert "root=PARTLABEL=root-b" in body and "appliance.slot=b" in body and "linux /b/vmlinuz" in body
    assert esp.read("b/vmlinuz") == b"kernel-2"

    slots.mark_bad(esp, "b")  # never reached READY: no tries left
    assert [(e.slot, e.state) for e in slots.boot_order(esp)] == [("a", "good"), ("b", "bad")]

    retried = slots.write_entry(esp, "b", 3, b"kernel-3", b"initrd-3", "")  # a fixed release replaces it
    assert sorted(esp.list(slots.ENTRIES)) == ["appliance-0001-a.conf", retried.file]
    slots.bless(esp, "b")
    assert [(e.slot, e.state, e.generation) for e in slots.boot_order(esp)] == [("b", "good", 3), ("a", "good", 1)]
    with pytest.raises(slots.SlotError, match="slot a has no boot entry"):
        slots.bless(slots.DirEsp(Path("/nonexistent")), "a")
