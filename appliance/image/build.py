"""`appliance image build BOARD`: a bootable A/B disk image for a board family, in cached steps.

1. **tree**: a Debian tree made by mmdebstrap (the board's suite and architecture, with its security and
   updates suites), with the kernel, systemd, systemd-boot, Python and the image's packages;
2. **wheels**: the offline wheelhouse of this checkout's device lock (``appliance.image.wheelhouse``);
3. **venv**: the tree with the appliance's third-party packages installed from the wheelhouse, in the tree's
   own Python (``/opt/appliance/.venv``);
4. **system and partitions**: this checkout's appliance wheel installed, the default models pulled into the
   data partition's store, the units (appliance, first boot, the health gate of boot assessment), DHCP, fstab
   (root read-only from the kernel command line, the data partition at /var, the ESP at /efi, /tmp in memory); then the
   partition files: ESP (systemd-boot as the removable-media loader, slot a's kernel, initrd and its blessed
   entry), root-a (the tree without /var), root-b (empty), data (the tree's /var);
5. **image**: the GPT image, its block map, a firmware bundle of the same root for the other slot, and a
   manifest (packages, models with their sha256s, Python distributions).

Each step's output is kept under ``cache/<board>/<step>-<hash>`` (the wheelhouse: ``cache/wheels-<arch>-<hash>``,
shared by the boards of an architecture) where the hash covers the step's inputs (the board
file, the package list, the locks, this checkout's code and units, the previous step), so a rebuild after a
code change redoes only the last step and the image. Only what a later build can start from is kept: the venv
step takes the Debian tree over (mmdebstrap runs again only when the venv must be remade) and the partitions
step keeps its partition files, kernel, initrd and a list of the tree's contents, not the tree (a few GB less
per board). Steps run as root (mmdebstrap's root mode, chroot, ownership in the tree).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.image import foreign, screen, slots, system, wheelhouse
from appliance.image.boards import EFI_ARCH, MACHINE, Board
from appliance.image.disk import assemble, bmap, derived_uuid, make_filesystem
from appliance.image.firmware import make_bundle
from appliance.image.steps import BuildError, cached, files_key, key, run

__all__ = ["BuildError", "Built", "build", "check_emulation", "packages"]

RECIPE = 3  # bump when a step's recipe changes: every cached step is rebuilt
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "systemd-boot", "initramfs-tools", "e2fsprogs",
                 "dosfstools", "ca-certificates", "iproute2")
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
PROJECT = Path(__file__).resolve().parents[2]
SLOT_MARKER = """[Unit]
Description=Say which root slot booted and how boot assessment judged it (serial console; boot tests wait for it)
After=local-fs.target appliance-healthy.service boot-complete.target systemd-bless-boot.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/appliance-slot-marker
[Install]
WantedBy=multi-user.target
"""
# "good": blessed this boot; "clean": a slot blessed before; "indeterminate": on trial, not (yet) blessed
SLOT_MARKER_SCRIPT = """#!/bin/sh
slot=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^appliance.slot=//p')
state=$(/usr/lib/systemd/systemd-bless-boot status 2>/dev/null || true)
sync
echo "APPLIANCE-SLOT ${slot:-none} UP (${state:-unknown})" > /dev/console
"""


@dataclass
class Built:
    image: Path
    bmap: Path
    bundle: Path
    manifest: Path


Step = Callable[[str], None]


def packages(board: Board, extra: tuple[str, ...] = ()) -> list[str]:
    return sorted({*BASE_PACKAGES, *system.PACKAGES, board.kernel, *(screen.PACKAGES if board.kiosk else ()), *extra})


def build(board: Board, out: Path, cache: Path, extra: tuple[str, ...] = (), step: Step = lambda s: None,
          project: Path = PROJECT) -> Built:
    if os.geteuid() != 0:
        raise BuildError("image builds run as root (mmdebstrap's root mode, chroot and file ownership in the "
                         "tree); fix: sudo appliance image build …")
    locks = [project / "requirements" / name for name in ("device.txt", "build.txt")]
    if not (project / "pyproject.toml").is_file() or not all(lock.is_file() for lock in locks):
        raise BuildError(f"{project} is not a checkout with pyproject.toml and requirements/: images are built "
                         "from a checkout of the appliance (its locks and code go into the image)")
    shared, cache = cache, cache / board.name  # one board's steps never evict another's; wheels are shared
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{board.name}.log"
    log.write_text("")
    wanted = packages(board, extra)
    board_key = board.model_dump_json(exclude_defaults=True)

    def tree(work: Path) -> None:
        sources = [f"deb {MIRROR} {board.suite} main", f"deb {MIRROR} {board.suite}-updates main",
                   f"deb {SECURITY} {board.suite}-security main"]
        run("tree", ["mmdebstrap", "--mode=root", "--variant=apt", f"--architectures={board.arch}",
                     f"--include={','.join(wanted)}", *_initrd_hooks(board), board.suite, str(work / "root"),
                     *sources], log)

    check_emulation(board)
    tree_key = key(RECIPE, board_key, wanted)
    tree_dir = cache / f"tree-{tree_key}" / "root"

    def debian_tree() -> Path:
        step("Debian tree (mmdebstrap)")
        return cached(cache, "tree", tree_key, tree) / "root"

    step("wheelhouse")  # keys are made of keys, not paths: a cache named by a relative path is the same cache
    wheels_key = key(RECIPE, board.arch, files_key(*locks), board.python_without,
                     tree_key if board.foreign else "")  # a foreign tree compiles the sdists
    wheels = cached(shared, f"wheels-{board.arch}", wheels_key,
                    lambda work: _wheelhouse(project, work, board, debian_tree(), log)) / "wheelhouse"

    def venv(work: Path) -> None:
        shutil.move(debian_tree(), work / "root")  # the tree is used up: only the venv step's output is kept
        shutil.rmtree(tree_dir.parent)
        system.install_venv(work / "root", wheels, log)

    step("the appliance's packages (venv)")
    venv_key = key(RECIPE, tree_key, wheels_key)
    venv_dir = cached(cache, "venv", venv_key, venv) / "root"
    units = project / "images" / "systemd"

    def parts(work: Path) -> None:
        root = work / "root"
        run("system", ["cp", "-a", "--reflink=auto", str(venv_dir), str(root)], log)  # device nodes too
        system.install_appliance(root, _appliance_wheel(project, work, log), log, board.models)
        _make_system(board, root)
        system.configure(root, units, log)
        if board.kiosk:
            screen.configure(root, units, log)
        _partition_files(board, root, work)
        (work / "boot").mkdir()
        for path in _boot_files(root):
            shutil.copy2(path, work / "boot" / path.name)
        (work / "contents.json").write_text(json.dumps(_contents(root)))
        shutil.rmtree(root)  # gigabytes, and in root-a.part already

    step("appliance, models, system and partitions")
    code = files_key(project / "appliance", project / "pyproject.toml", units)
    part_dir = cached(cache, "parts", key(RECIPE, board_key, venv_key, code, SLOT_MARKER, SLOT_MARKER_SCRIPT,
                                          _options(board)), parts)

    step("image, block map, bundle")
    image = out / f"{board.name}.img"
    files = {name: part_dir / f"{name}.part" for name in ("esp", "root-a", "root-b", "data")}
    assemble(image, board, files)
    block_map = bmap(image)
    kernel, initrd = _boot_files(part_dir)
    slot_root = out / f"{board.name}.root.ext4"  # the root filesystem shrunk to its content, for the bundle
    run("bundle", ["cp", "--sparse=always", str(files["root-a"]), str(slot_root)], log)
    run("bundle", ["e2fsck", "-fy", str(slot_root)], log)
    run("bundle", ["resize2fs", "-M", str(slot_root)], log)
    bundle = make_bundle(out / f"{board.name}.bundle", board.name, 2, slot_root, kernel, initrd, _options(board))
    slot_root.unlink()
    manifest = out / f"{board.name}.manifest.json"
    contents = json.loads((part_dir / "contents.json").read_text())
    manifest.write_text(json.dumps({"board": board.name, "recipe": RECIPE, "image": image.name, "bundle": bundle.name,
                                    **contents, "python_without": board.python_without}, indent=1))
    return Built(image, block_map, bundle, manifest)


def _initrd_hooks(board: Board) -> list[str]:
    """mmdebstrap hooks that make the initrd of only the board's modules (before the kernel is installed, so
    every run of update-initramfs in the tree, emulated or not, is a short one)."""
    if not board.initrd_modules:
        return []
    modules = "\\n".join(board.initrd_modules)
    return [f'--setup-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"'
            f' && echo MODULES=list > "$1/etc/initramfs-tools/conf.d/appliance.conf"'
            f' && printf "{modules}\\n" > "$1/usr/share/initramfs-tools/modules.d/appliance"']


def check_emulation(board: Board, binfmt: Path = Path("/proc/sys/fs/binfmt_misc")) -> None:
    """A board of another architecture needs an enabled binfmt_misc handler of qemu-user-static."""
    if not board.foreign:
        return
    machine = MACHINE[board.arch]
    handler = binfmt / f"qemu-{machine}"
    if not handler.exists() or not handler.read_text().startswith("enabled"):
        raise BuildError(f"a {board.arch} image on this {os.uname().machine} host runs the {board.arch} tree "
                         f"under emulation, and binfmt_misc has no enabled qemu-{machine} handler; fix: apt-get "
                         "install qemu-user-static binfmt-support && mount -t binfmt_misc binfmt_misc "
                         "/proc/sys/fs/binfmt_misc; update-binfmts --enable (make test-images does this)")


def _wheelhouse(project: Path, work: Path, board: Board, tree: Path, log: Path) -> None:
    target = foreign.target(board, tree, work, log) if board.foreign else None
    try:
        wheelhouse.build(project, work / "wheelhouse", target=target, without=board.python_without)
    except wheelhouse.WheelhouseError as exc:
        raise BuildError(f"step wheels: {exc}") from None


def _appliance_wheel(project: Path, work: Path, log: Path) -> Path:
    """This checkout's appliance as a wheel (pure Python; seconds)."""
    with tempfile.TemporaryDirectory(prefix="appliance-wheel-") as tmp:  # the checkout's build/ left alone
        run("appliance", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(work / "wheel"), str(project)], log, env={**os.environ, "TMPDIR": tmp})
    found = sorted((work / "wheel").glob("appliance-*.whl"))
    if not found:
        raise BuildError("step appliance: pip made no appliance wheel")
    return found[-1]


def _contents(root: Path) -> dict[str, list[str] | dict[str, dict[str, str]]]:
    """What the tree holds, for the manifest: Debian packages, models with their files' sha256s, Python
    distributions."""
    dpkg = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W",
                           "-f=${Package}=${Version}\\n"], capture_output=True, text=True).stdout.split()
    models = {}
    for link in sorted((root / system.STATE.lstrip("/") / "models" / "active").iterdir()):
        tree = json.loads((link.resolve() / "manifest.json").read_text())
        models[link.name] = {f["name"]: f["sha256"] for f in tree["files"]}
    site = next((root / system.VENV.lstrip("/") / "lib").glob("python3*/site-packages"))
    python = sorted(p.name.removesuffix(".dist-info") for p in site.glob("*.dist-info"))
    return {"packages": sorted(dpkg), "python": python, "models": models}


def _options(board: Board) -> str:
    return f"console=tty0 console={board.console},115200 rootwait"  # the last console is /dev/console


def _make_system(board: Board, root: Path) -> None:
    (root / "etc" / "fstab").write_text(
        "# root: read-only, from the kernel command line (root=PARTLABEL=root-<slot> ro)\n"
        "PARTLABEL=data  /var  ext4  defaults,noatime  0  2\n"
        "PARTLABEL=esp   /efi  vfat  umask=0077,noauto,x-systemd.automount  0  2\n"
        "# /tmp in memory: the root is read-only (and PrivateTmp= needs a writable /tmp to give units their own)\n"
        "tmpfs           /tmp  tmpfs  nosuid,nodev,mode=1777,size=25%  0  0\n")
    (root / "etc" / "hostname").write_text("appliance\n")
    (root / "etc" / "machine-id").write_text("uninitialized\n")  # first boot: systemd makes one (read-only /etc:
    (root / "efi").mkdir(exist_ok=True)                         # held in memory until /etc is writable)
    unit = root / "etc" / "systemd" / "system" / "appliance-slot.service"
    unit.write_text(SLOT_MARKER)
    script = root / "usr" / "local" / "sbin" / "appliance-slot-marker"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SLOT_MARKER_SCRIPT)
    script.chmod(0o755)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "appliance-slot.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/appliance-slot.service")
    getty = wants / f"serial-getty@{board.console}.service"
    if not getty.is_symlink():
        getty.symlink_to("/lib/systemd/system/serial-getty@.service")


def _boot_files(root: Path) -> tuple[Path, Path]:
    """The kernel and initrd in ``root``'s /boot (a tree, or a parts step's output)."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BuildError("the tree has no kernel or initrd in /boot (is the board's kernel package right?)")
    return kernels[-1], initrds[-1]


def _partition_files(board: Board, root: Path, work: Path) -> None:
    kernel, initrd = _boot_files(root)
    esp = work / "esp-tree"
    efi = EFI_ARCH[board.arch]
    loader = root / "usr" / "lib" / "systemd" / "boot" / "efi" / f"systemd-boot{efi}.efi"
    (esp / "EFI" / "BOOT").mkdir(parents=True)
    shutil.copyfile(loader, esp / "EFI" / "BOOT" / f"BOOT{efi.upper()}.EFI")
    slots.write_entry(slots.DirEsp(esp), "a", 1, kernel.read_bytes(), initrd.read_bytes(), _options(board), tries=0)
    var = work / "var-tree"
    shutil.move(root / "var", var)
    (root / "var").mkdir()
    trees: dict[str, Path | None] = {"esp": esp, "root-a": root, "root-b": None, "data": var}
    for spec in board.layout:
        make_filesystem(spec, work / f"{spec.name}.part", trees[spec.name], derived_uuid(board.name, spec.name, "fs"))
    (root / "var").rmdir()
    shutil.move(var, root / "var")  # back in the tree: the manifest reads its package list
    shutil.rmtree(esp)
