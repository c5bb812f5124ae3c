"""One update agent poll in its own process, for the kill -9 tests: ``python -m tests.support.fleet_worker
STORE STATE URL ROOT HEALTH`` (HEALTH: ``ok`` or ``fail``). The smoke test loads the model in ONNX Runtime and
runs it once: a real check, light enough to start a hundred times."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from appliance.fleet.install import Hooks
from appliance.models import ModelStore
from appliance.models.store import ModelFiles
from tests.support import fleet


def smoke(files: ModelFiles) -> str | None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(files.file("onnx", ".onnx")), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                  np.int64 if "int64" in i.type else np.float32) for i in session.get_inputs()}
        feeds = {k: (v if k != "input" else np.zeros((1, 576), np.float32)) for k, v in feeds.items()}
        session.run(None, feeds)
    except Exception as exc:
        return str(exc)[:200]
    return None


def main(store: str, state: str, url: str, root: str, health: str) -> int:
    def check(job: object) -> str | None:
        time.sleep(0.3)  # a health check takes a while (services settle): room for a kill inside the step
        return None if health == "ok" else "the test says unhealthy"

    hooks = Hooks(smoke=smoke, health=check, switched=lambda model_id: time.sleep(0.2))
    dev = fleet.device(ModelStore(Path(store)), Path(state), url, Path(root), hooks)
    print("polling", flush=True)  # imports done: the test times its kill from here
    status = dev.agent.poll_once()
    print(status.last_error or "ok", flush=True)
    return 0 if status.last_error is None else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
