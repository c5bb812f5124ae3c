"""Offline ONNX -> TFLite conversion of the Silero VAD v6 model shipped in faster-whisper.

Usage: python silero_vad_tflite.py SRC.onnx OUT.tflite   (in the converter venv, see requirements/convert.txt)

Requires (pinned, all from PyPI): onnx2tf==1.29.24 (which pins tensorflow==2.19.0,
tf-keras==2.19.0, onnx==1.19.1, onnxruntime==1.23.0, ai-edge-litert==2.1.0, ...).

What it does:
  1. Preprocess the ONNX graph in memory:
     * fix the dynamic `seq_len` dim of `input` (and of `speech_probs`) to 1
       -> one 576-sample frame (64 context + 512 new) per call, LSTM state carried by caller;
     * split every multi-axis constant Slice into single-axis Slices (and clamp INT64_MAX ends).
       onnx2tf 1.29.24 mis-maps the 2-axis Slice on the NCW->NWC transposed STFT output
       (produces a 0-sized tensor and then fails in the next Conv).
  2. Run onnx2tf with not_use_onnxsim=True (onnxsim would re-fuse the Slices) and
     keep_shape_absolutely_input_names=['h','c'] (otherwise the [1,1,128] LSTM states are
     treated as NCW and transposed to [1,128,1], which breaks the LSTM initial_state).
  3. Self-check the float32 .tflite with ai_edge_litert against onnxruntime (optional).
  4. Atomically write ONLY `out_tflite`; all onnx2tf artefacts (saved_model, float16 tflite,
     the rewritten copy of the ONNX) live in a temp dir that is removed.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import numpy as np


def _preprocess(src: str, dst: str) -> None:
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    m = onnx.load(src)
    names_in = [i.name for i in m.graph.input]
    names_out = [o.name for o in m.graph.output]
    if names_in != ["input", "h", "c"] or names_out != ["speech_probs", "hn", "cn"]:
        raise ValueError(f"unexpected Silero VAD I/O: {names_in} -> {names_out}")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1   # seq_len -> 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    del m.graph.value_info[:]
    m = shape_inference.infer_shapes(m, strict_mode=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.input)}
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}

    new_nodes, k = [], 0
    for n in m.graph.node:
        multi = (n.op_type == "Slice" and len(n.input) >= 4
                 and all(i in inits for i in n.input[1:] if i)
                 and inits[n.input[1]].size > 1)
        if not multi:
            new_nodes.append(n)
            continue
        st, en, ax = (inits[i] for i in n.input[1:4])
        sp = inits[n.input[4]] if len(n.input) > 4 and n.input[4] else np.ones_like(st)
        shp = shapes[n.input[0]]
        cur = n.input[0]
        for j in range(len(st)):
            a = int(ax[j]) % len(shp)
            dim = shp[a]
            if dim <= 0 or int(sp[j]) != 1:
                raise ValueError(f"cannot split Slice {n.name}: dim={dim} step={sp[j]}")
            vals = (min(int(st[j]), dim), min(int(en[j]), dim), a, 1)
            ins = []
            for tag, v in zip("seap", vals, strict=True):
                t = f"{n.name or 'slice'}__split{k}_{tag}"
                m.graph.initializer.append(numpy_helper.from_array(np.array([v], np.int64), t))
                ins.append(t)
            out = n.output[0] if j == len(st) - 1 else f"{n.name or 'slice'}__split{k}_out"
            new_nodes.append(helper.make_node("Slice", [cur, *ins], [out],
                                              name=f"{n.name or 'slice'}__split{k}"))
            cur, k = out, k + 1
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    del m.graph.value_info[:]
    m = shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, dst)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """onnx2tf/TF print banners to stdout (Python and C level); keep the caller's stdout clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _self_check(onnx_path: str, tflite_path: str, tol: float = 1e-3) -> float:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(model_path=tflite_path, num_threads=1).get_signature_runner("serving_default")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    t = np.arange(20 * 576) / 16000.0
    sig = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
           + rng.normal(0, 0.02, t.size)).astype(np.float32).reshape(20, 576)
    h1 = c1 = h2 = c2 = np.zeros((1, 1, 128), np.float32)
    worst = 0.0
    for f in sig:
        p1, h1, c1 = sess.run(None, {"input": f[None], "h": h1, "c": c1})
        r = run(input=f[None], h=h2, c=c2)
        p2, h2, c2 = r["speech_probs"], r["hn"], r["cn"]
        worst = max(worst, float(np.abs(p1 - p2).max()), float(np.abs(h1 - h2).max()),
                    float(np.abs(c1 - c2).max()))
    if not worst < tol:
        raise RuntimeError(f"tflite/onnx mismatch: max abs diff {worst:.3g} >= {tol}")
    return worst


def convert(onnx_path: str, out_tflite: str, verify: bool = True) -> None:
    onnx_path = os.path.abspath(onnx_path)
    out_tflite = os.path.abspath(out_tflite)
    tmp = tempfile.mkdtemp(prefix="vad2tflite_")
    old_cwd = os.getcwd()
    # Quiet TF C++ logs; keep keras.json out of ~/.keras; no GPU probing.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("KERAS_HOME", os.path.join(tmp, "keras_home"))
    try:
        prepped = os.path.join(tmp, "vad.onnx")          # onnx2tf rewrites its input in place
        _preprocess(onnx_path, prepped)
        pristine = os.path.join(tmp, "vad_prepped_ref.onnx")
        shutil.copyfile(prepped, pristine)
        out_dir = os.path.join(tmp, "out")
        with _stdout_to_stderr():
            os.chdir(tmp)                                 # anything written to cwd stays in tmp
            import onnx2tf
            onnx2tf.convert(
                input_onnx_file_path=prepped,
                output_folder_path=out_dir,
                not_use_onnxsim=True,
                keep_shape_absolutely_input_names=["h", "c"],
                non_verbose=True,
            )
        found = glob.glob(os.path.join(out_dir, "*_float32.tflite"))
        if len(found) != 1:
            raise RuntimeError(f"onnx2tf produced no float32 tflite in {out_dir}: {os.listdir(out_dir)}")
        if verify:
            _self_check(onnx_path, found[0])
        os.makedirs(os.path.dirname(out_tflite) or ".", exist_ok=True)
        staging = out_tflite + ".tmp"
        shutil.copyfile(found[0], staging)
        os.replace(staging, out_tflite)
    finally:
        os.chdir(old_cwd)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: convert.py SRC.onnx OUT.tflite")
    convert(sys.argv[1], sys.argv[2])
    print(sys.argv[2])
