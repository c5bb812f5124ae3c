"""`appliance sbom`: write a CycloneDX SBOM (JSON) of the installed Python environment and the model catalog.

The building is `appliance.release.sbom` (imported when the command runs: cyclonedx is no start-up cost for the
other commands). Output goes to stdout, or atomically to ``-o PATH`` (a temporary file beside it, then a rename).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from appliance.cli.state import CliState
from appliance.config.files import write_atomic
from appliance.errors import ApplianceError


def sbom(
    ctx: typer.Context,
    output: Path | None = typer.Option(
        None, "--output", "-o", metavar="PATH", help="Write the SBOM here, atomically (default: stdout)."),
    lock: list[Path] | None = typer.Option(
        None, "--lock", metavar="PATH", help="Hash lock to take sha256 from (repeatable; default: the repository's "
        "requirements/device.txt, lock.txt and build.txt)."),
) -> None:
    """CycloneDX SBOM (JSON): installed distributions with their locked sha256, catalog models with their files'."""
    from appliance.models import ModelStore, default_store_path, load_catalog
    from appliance.release.locks import read_locks, repository_locks
    from appliance.release.sbom import SPEC, build_bom, render

    state: CliState = ctx.obj
    paths = lock or repository_locks()
    if not paths:
        Console(stderr=True).print("note: no hash lock found (not run from the repository): packages are listed "
                                   "without sha256; give one with --lock", highlight=False)
    locks = read_locks(paths)
    settings = state.settings
    store = ModelStore(settings.models.store or default_store_path())
    bom = build_bom(load_catalog(settings.models.catalog), store, locks)
    text = render(bom) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    try:
        write_atomic(output, text)
    except OSError as exc:
        raise ApplianceError(f"cannot write the SBOM to {output}: {exc.strerror or exc}") from None
    Console(stderr=True).print(f"CycloneDX {SPEC.to_version()} SBOM written to {output} "
                               f"({len(bom.components)} components)", highlight=False)
