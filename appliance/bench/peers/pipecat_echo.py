"""The peer of `appliance bench voice --peer pipecat`: an echo bot built with Pipecat, run by the Python of
Pipecat's own venv (`make bench-peers`), never the product's; it imports nothing of the appliance.

Pipecat's parts with their defaults, on the appliance's own model files: VADProcessor with SileroVADAnalyzer
(Pipecat's Silero, default VADParams) → WhisperSTTService (the same CTranslate2 tiny.en, int8 on the CPU, as the
appliance chooses here) → an echo step (each transcription spoken back) → PiperTTSService (the same joe-medium
voice). No transport: audio is queued into the pipeline task in 20 ms frames at real time.

Input (``--turns``): a JSON list of {"name", "pcm" (16 kHz mono s16le file: lead silence, prompt, tail),
"last_frame" (index of the 20 ms frame holding the prompt's last speech sample, by the bench's rule)}.
Output (``--out``): a JSON list of {"name", "latency_s" (first answer audio minus that frame's queueing; null when
none came within 5 s of the tail), "heard"}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

FRAME_BYTES = 640  # 20 ms of 16 kHz s16le
RATE = 16000
WAIT_AFTER_S = 5.0  # after the tail, how long an answer may still come
SETTLE_S = 0.3  # after the answer ends, before the next prompt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--whisper", type=Path, required=True, help="CTranslate2 Whisper model folder")
    parser.add_argument("--piper", type=Path, required=True, help="Piper voice: the .onnx file (its .json beside)")
    parser.add_argument("--turns", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    turns = json.loads(args.turns.read_text())
    results = asyncio.run(run(args.whisper, args.piper, turns))
    args.out.write_text(json.dumps(results))
    return 0


async def run(whisper: Path, piper: Path, turns: list[dict]) -> list[dict]:
    from loguru import logger
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import (
        EndFrame,
        InputAudioRawFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.workers.runner import WorkerRunner

    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    class Echo(FrameProcessor):
        """What the appliance's echo bot does: say back what was heard."""

        def __init__(self) -> None:
            super().__init__()
            self.heard: list[str] = []

        async def process_frame(self, frame, direction: FrameDirection) -> None:  # type: ignore[no-untyped-def]
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            if isinstance(frame, TranscriptionFrame) and frame.text.strip():
                self.heard.append(frame.text.strip())
                await self.push_frame(TTSSpeakFrame(frame.text.strip()))

    class Ear(FrameProcessor):
        """The end of the pipeline: when answer audio arrives and when it ends."""

        def __init__(self) -> None:
            super().__init__()
            self.audio_at: list[float] = []
            self.stopped = asyncio.Event()

        async def process_frame(self, frame, direction: FrameDirection) -> None:  # type: ignore[no-untyped-def]
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                self.audio_at.append(time.monotonic())
            elif isinstance(frame, TTSStoppedFrame):
                self.stopped.set()
            await self.push_frame(frame, direction)

    with tempfile.TemporaryDirectory() as voices:
        voice = "en_US-joe-medium"  # Piper's service loads <dir>/<voice>.onnx and the .json beside it
        (Path(voices) / f"{voice}.onnx").symlink_to(piper.resolve())
        (Path(voices) / f"{voice}.onnx.json").symlink_to(Path(f"{piper.resolve()}.json"))
        stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=str(whisper)), device="cpu",
                                compute_type="int8")
        tts = PiperTTSService(settings=PiperTTSService.Settings(voice=voice), download_dir=Path(voices))
        echo, ear = Echo(), Ear()
        pipeline = Pipeline([VADProcessor(vad_analyzer=SileroVADAnalyzer()), stt, echo, tts, ear])
        worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=RATE,
                                                                audio_out_sample_rate=RATE),
                                enable_rtvi=False, idle_timeout_secs=None)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        running = asyncio.create_task(runner.run())
        await asyncio.sleep(1.0)  # models loaded, the StartFrame through
        results = []
        for turn in turns:
            results.append(await _turn(worker, echo, ear, turn, InputAudioRawFrame))
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, timeout=30)
    return results


async def _turn(worker, echo, ear, turn: dict, frame_type) -> dict:  # type: ignore[no-untyped-def]
    pcm = Path(turn["pcm"]).read_bytes()
    echo.heard.clear()
    ear.audio_at.clear()
    ear.stopped.clear()
    fed_last: float | None = None
    start = time.monotonic()
    for index in range(len(pcm) // FRAME_BYTES):
        delay = start + (index + 1) * FRAME_BYTES / 2 / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # a frame exists only once its 20 ms have been captured
        if index == turn["last_frame"]:
            ear.audio_at.clear()
            fed_last = time.monotonic()
        await worker.queue_frame(frame_type(audio=pcm[index * FRAME_BYTES:(index + 1) * FRAME_BYTES],
                                          sample_rate=RATE, num_channels=1))
    deadline = time.monotonic() + WAIT_AFTER_S
    while not ear.audio_at and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    first = ear.audio_at[0] if ear.audio_at else None
    if first is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ear.stopped.wait(), timeout=WAIT_AFTER_S)
    await asyncio.sleep(SETTLE_S)
    latency = first - fed_last if first is not None and fed_last is not None else None
    return {"name": turn["name"], "latency_s": latency, "heard": " ".join(echo.heard)}


if __name__ == "__main__":
    sys.exit(main())
