"""Smoke inferences: one per model kind, each checking that the output is sane, not just present.

A runtime that loads a model but returns NaNs, wrong shapes or nonsense must lose the selection.
Each check returns a one-line description of what it saw, for `appliance doctor`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from appliance.models.store import ModelFiles
from appliance.runtime.base import ModelRejected, TensorSession

SILERO_WINDOW = 512 + 64  # 32 ms at 16 kHz plus 64 samples of context


def _finite(name: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.size == 0 or not np.all(np.isfinite(value)):
        raise ModelRejected(f"smoke inference gave {'no' if value.size == 0 else 'non-finite'} {name}")
    return value


def silero_vad(session: TensorSession, model: ModelFiles) -> str:
    """Silence in, frame by frame with the state carried: probabilities in [0, 1], low; state of its shape."""
    h = c = np.zeros((1, 1, 128), np.float32)
    frame = np.zeros((1, SILERO_WINDOW), np.float32)
    probs_seen = []
    for _ in range(8):
        out = session.run({"input": frame, "h": h, "c": c})
        h, c = out["hn"], out["cn"]
        probs_seen.append(out["speech_probs"].reshape(-1))
    probs = _finite("speech probability", np.concatenate(probs_seen))
    if probs.min() < 0 or probs.max() > 1:
        raise ModelRejected(f"speech probability outside [0, 1]: {probs.min():.3f}..{probs.max():.3f}")
    if probs.max() > 0.5:
        raise ModelRejected(f"silence scored as speech ({probs.max():.2f})")
    if _finite("state", out["hn"]).shape != (1, 1, 128):
        raise ModelRejected(f"LSTM state came back with shape {out['hn'].shape}")
    return f"silence → speech p ≤ {probs.max():.3f}"


def piper(session: TensorSession, model: ModelFiles) -> str:
    """Phonemes of "hello world" in: a plausible length of finite, audible audio out."""
    config = json.loads(model.variants["onnx"]["model.onnx.json"].read_text())
    ids_map = config["phoneme_id_map"]
    ids = list(ids_map["^"])
    for phoneme in "həlˈoʊ wˈɜːld":
        ids += ids_map[phoneme] + ids_map["_"]
    ids += ids_map["$"]
    inference = config["inference"]
    feeds: dict[str, np.ndarray] = {
        "input": np.array([ids], np.int64),
        "input_lengths": np.array([len(ids)], np.int64),
        "scales": np.array([inference["noise_scale"], inference["length_scale"], inference["noise_w"]], np.float32),
    }
    audio = _finite("audio", next(iter(session.run(feeds).values()))).reshape(-1)
    seconds = audio.size / config["audio"]["sample_rate"]
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    if not 0.3 <= seconds <= 4.0:
        raise ModelRejected(f"'hello world' synthesised to {seconds:.2f} s")
    if rms < 0.005:
        raise ModelRejected(f"'hello world' synthesised to near silence (rms {rms:.4f})")
    return f"'hello world' → {seconds:.2f} s of audio, rms {rms:.3f}"


def speaker_embedder(session: TensorSession, model: ModelFiles) -> str:
    """Two different log-mel windows give two different, finite, repeatable 256-d embeddings."""
    rng = np.random.default_rng(7)
    name = session.inputs[0].name
    a, b = (rng.normal(-4.0, 2.0, (1, 80, 40)).astype(np.float32) for _ in range(2))
    ea = _finite("embedding", next(iter(session.run({name: a}).values()))).reshape(-1)
    eb = _finite("embedding", next(iter(session.run({name: b}).values()))).reshape(-1)
    ea2 = next(iter(session.run({name: a}).values())).reshape(-1)
    if ea.shape != (256,):
        raise ModelRejected(f"embedding has shape {ea.shape}, expected (256,)")
    if not np.allclose(ea, ea2, atol=1e-4):
        raise ModelRejected("the same input gave different embeddings")
    cosine = float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-9))
    if np.linalg.norm(ea) < 1e-3 or cosine > 0.9999:
        raise ModelRejected("embeddings are degenerate (zero, or identical for different inputs)")
    return f"256-d embeddings, cosine of two inputs {cosine:.2f}"


def whisper(model_handle: Any, model: ModelFiles) -> str:
    """Thirty seconds of silence in: finite language probabilities and a short, decodable output. The encoder
    runs once and both steps reuse its output (a second 30 s encode doubled a multilingual model's start-up)."""
    import ctranslate2

    n_mels = int(getattr(model_handle, "n_mels", 80))
    # Log-mel of digital silence after Whisper's normalisation: (log10(1e-10) + 4) / 4.
    features = model_handle.encode(ctranslate2.StorageView.from_array(np.full((1, n_mels, 3000), -1.5, np.float32)))
    prompt = ["<|startoftranscript|>"]
    detail = ""
    if model_handle.is_multilingual:
        languages = model_handle.detect_language(features)[0]
        total = sum(p for _, p in languages)
        if not 0.98 <= total <= 1.02 or not np.isfinite(total):
            raise ModelRejected(f"language probabilities sum to {total:.3f}")
        detail = f"{len(languages)} languages, "
        prompt += ["<|en|>", "<|transcribe|>"]
    prompt.append("<|notimestamps|>")
    result = model_handle.generate(features, [prompt], max_length=16, return_scores=True)[0]
    if not result.sequences or not np.isfinite(result.scores[0]):
        raise ModelRejected("decoding silence gave no finite hypothesis")
    return f"{detail}silence decodes to {len(result.sequences_ids[0])} tokens"


def bergamot(model_handle: Any, model: ModelFiles) -> str:
    """A short sentence in the source language comes out as different, non-empty text."""
    sample = {"en": "Good morning, how can I help you?", "pt": "Bom dia, como posso ajudar?"}
    source = sample.get(model_handle.pair[0], sample["en"])
    out = model_handle.translate(source)
    if not out.strip() or out.strip() == source:
        raise ModelRejected(f"translation of {source!r} gave {out!r}")
    return f"{source!r} → {out!r}"


SMOKE: dict[str, Callable[[Any, ModelFiles], str]] = {
    "silero-vad": silero_vad,
    "piper": piper,
    "speaker-embedder": speaker_embedder,
    "whisper": whisper,
    "bergamot": bergamot,
}


def smoke_test(kind: str, handle: Any, model: ModelFiles) -> str:
    check = SMOKE.get(kind)
    if check is None:
        raise ModelRejected(f"no smoke test for model kind {kind!r}")
    try:
        return check(handle, model)
    except ModelRejected:
        raise
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelRejected(f"smoke inference failed: {line}") from None
