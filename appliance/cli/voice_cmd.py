"""`appliance transcribe | speak | interpret`: the voice core on files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from appliance.audio import ASR_RATE, read_audio, write_wav
from appliance.cli.state import CliState
from appliance.errors import ApplianceError
from appliance.voice.asr import AsrOptions
from appliance.voice.offline import segments
from appliance.voice.stack import VoiceStack

MAX_FILE_S = 3 * 3600.0
err = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeRemainingColumn(), console=err,
                    transient=True)


def _utterances(stack: VoiceStack, audio: np.ndarray, label: str) -> list[tuple[float, float, np.ndarray]]:
    with _progress() as progress:
        task = progress.add_task(label, total=len(audio) / ASR_RATE)
        return [(s.start, s.end, s.audio) for s in segments(audio, stack.new_vad(),
                                                             progress=lambda sec: progress.advance(task, sec))]


def transcribe(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Audio file (WAV, FLAC, OGG, …), any rate or channels."),
    language: str | None = typer.Option(None, help="Spoken language (default: identify it)."),
    translate: bool = typer.Option(False, help="Translate the speech to English text (multilingual model)."),
    prompt: str | None = typer.Option(None, help="Context or vocabulary for the recogniser."),
    hotword: list[str] | None = typer.Option(None, help="A word to favour (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Segments with times and language as JSON."),
) -> None:
    """Transcribe (or translate to English) a recording, utterance by utterance."""
    stack = _stack(ctx)
    audio = read_audio(file, 16000, max_seconds=MAX_FILE_S)
    options = AsrOptions(language=language, task="translate" if translate else "transcribe", prompt=prompt,
                         hotwords=tuple(hotword or ()))
    asr = stack.asr[stack.asr_model(language, options.task)]
    out: list[dict[str, str | float]] = []
    for start, end, chunk in _utterances(stack, audio.samples, f"transcribing {file.name}"):
        result = asr.transcribe(chunk, options)
        if result.text:
            out.append({"start": round(start, 2), "end": round(end, 2), "text": result.text,
                        "language": result.language})
    if as_json:
        typer.echo(json.dumps({"file": str(file), "duration": round(audio.duration, 2), "segments": out},
                              ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join(str(s["text"]) for s in out))


def speak(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="What to say."),
    output: Path = typer.Option(..., "-o", "--output", help="WAV file to write."),
    language: str = typer.Option("en", help="Language; without a neural voice the espeak-ng fallback is used."),
) -> None:
    """Synthesise text to a WAV file."""
    stack = _stack(ctx)
    tts = stack.tts(language)
    audio = tts.synthesize(text)
    write_wav(output, audio, tts.out_rate)
    if tts.voice.fallback:
        err.print(f"[yellow]note:[/] no neural voice for '{language}'; used {tts.voice.label}")
    err.print(f"{output}: {len(audio) / tts.out_rate:.2f} s, {tts.voice.label}")


def interpret(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Recording in the source language."),
    source: str = typer.Option(..., "--from", help="Spoken language, e.g. es."),
    target: str = typer.Option(..., "--to", help="Language to speak, e.g. en."),
    output: Path = typer.Option(..., "-o", "--output", help="WAV file of the interpretation."),
) -> None:
    """Interpret a recording: speech in one language → speech in another (captions on stdout)."""
    stack = _stack(ctx)
    router = stack.router()
    direct = target == "en" and source != "en" and router.speech_to_english
    translator = None if direct or source == target else router.route(source, target)
    options = AsrOptions(language=source, task="translate" if direct else "transcribe")
    asr = stack.asr[stack.asr_model(source, options.task)]
    tts = stack.tts(target)
    audio = read_audio(file, 16000, max_seconds=MAX_FILE_S)
    pieces: list[np.ndarray] = []
    gap = np.zeros(int(0.3 * tts.out_rate), np.float32)
    for start, _end, chunk in _utterances(stack, audio.samples, f"interpreting {file.name}"):
        heard = asr.transcribe(chunk, options).text
        if not heard:
            continue
        said = translator.translate(heard, source, target) if translator else heard
        typer.echo(f"[{start:7.2f}] {heard}\n          → {said}" if translator else f"[{start:7.2f}] {said}")
        pieces += [tts.synthesize(said), gap]
    if not pieces:
        raise ApplianceError(f"no speech found in {file}")
    write_wav(output, np.concatenate(pieces), tts.out_rate)
    err.print(f"{output}: {sum(len(p) for p in pieces) / tts.out_rate:.1f} s, {tts.voice.label}")


def _stack(ctx: typer.Context) -> VoiceStack:
    state: CliState = ctx.obj
    return state.device.voice_stack()
