"""Build derived variants (e.g. TFLite from ONNX) at provisioning time, in the converter's own venv.

Converters need heavy tools (onnx2tf pulls TensorFlow) that the device never loads at run time, so
they run as a subprocess of a separate interpreter; the result is verified by the script itself and
stored, checksummed, in the model store's cache, keyed by the source file's sha256.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.models.catalog import ModelEntry
from appliance.models.store import ModelStore, StoreError

CONVERTERS = Path(__file__).resolve().parent / "converters"
TIMEOUT_S = 900


def build_derived(store: ModelStore, entry: ModelEntry, python: Path) -> list[str]:
    """Build every derived variant of ``entry`` that is not in the store yet; return what was built."""
    built = []
    for variant, how in entry.derived.items():
        source_sha = entry.sha256_of(how.source)
        if (store.cache_dir(variant, source_sha) / "manifest.json").exists():
            continue
        src_variant, src_name = how.source.split("/", 1)
        source = store.root / "active" / entry.id / src_variant / src_name
        script = CONVERTERS / f"{how.converter}.py"

        def run(directory: Path, variant: str = variant, source: Path = source, script: Path = script,
                name: str = how.name) -> None:
            _run_converter(entry.id, variant, python, script, source, directory / name)

        store.put_derived(variant, source_sha, run)
        built.append(variant)
    return built


def _run_converter(model_id: str, variant: str, python: Path, script: Path, source: Path, out: Path) -> None:
    if not python.exists():
        raise StoreError(f"model {model_id}: cannot build its {variant} variant: converter python {python} "
                         "does not exist; fix: make models (it creates .venv-convert)")
    try:
        proc = subprocess.run([str(python), str(script), str(source), str(out)], capture_output=True,
                              text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise StoreError(f"model {model_id}: building its {variant} variant took over {TIMEOUT_S} s") from None
    if proc.returncode != 0 or not out.exists():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        print(proc.stderr[-4000:], file=sys.stderr)
        raise StoreError(f"model {model_id}: building its {variant} variant failed: {lines[-1][:300]}")
