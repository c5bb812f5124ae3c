"""Board-family profiles (hw/*.yaml) and the pure function that picks one for a HardwareReport."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from appliance.config.paths import shipped
from appliance.errors import ApplianceError
from appliance.hw.report import AcceleratorKind, HardwareReport

Task = Literal["asr", "tts", "vad", "mt", "speaker", "llm"]  # llm: served by the upstream tier, not on a device
TASKS: tuple[Task, ...] = ("asr", "tts", "vad", "mt", "speaker")  # what a device runs: every profile lists them
DEFAULT_PROFILES_DIR = shipped("hw")


class ProfileError(ApplianceError):
    """A profile file is unreadable or invalid, or a forced profile does not exist."""


class Candidate(BaseModel):
    """One runtime choice: ``runtime:device[:precision]``, e.g. ``ctranslate2:cpu:int8``, ``openvino:NPU``."""

    model_config = ConfigDict(frozen=True)
    runtime: str
    device: str = "cpu"
    precision: str | None = None

    def __str__(self) -> str:
        return ":".join(p for p in (self.runtime, self.device, self.precision) if p)


def _parse_candidate(value: Any) -> Any:
    if isinstance(value, str):
        parts = value.split(":")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise ValueError(f"runtime candidate {value!r} is not runtime[:device[:precision]]")
        return dict(zip(("runtime", "device", "precision"), parts, strict=False))
    return value


CandidateSpec = Annotated[Candidate, BeforeValidator(_parse_candidate)]


class MatchRules(BaseModel):
    """All given rules must hold. Lists are alternatives except ``cpu_flags`` and ``accelerators``."""

    model_config = ConfigDict(extra="forbid")
    system: list[str] | None = Field(None, description="Operating systems (platform.system()).")
    arch: list[str] | None = Field(None, description="CPU architectures.")
    compatible: list[str] | None = Field(None, description="Device-tree compatible globs; any one.")
    cpu_model: str | None = Field(None, description="Regex searched in the CPU model name.")
    cpu_flags: list[str] | None = Field(None, description="ISA features all required.")
    accelerators: list[AcceleratorKind] | None = Field(None, description="Accelerator kinds all required.")
    max_memory_mb: int | None = Field(None, description="At most this much RAM.")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    priority: int = Field(description="Higher wins when several profiles match.")
    match: MatchRules
    threads: int = Field(gt=0, description="Inference threads.")
    memory_budget_mb: int = Field(gt=0, description="Budget for resident models.")
    runtimes: dict[Task, list[CandidateSpec]] = Field(description="Per task, runtimes in order of preference.")
    default_models: list[str] = Field(description="Catalog ids provisioned by default.")


@dataclass
class ProfileMatch:
    profile: Profile
    reasons: list[str]
    rejected: dict[str, str] = field(default_factory=dict)


def load_profiles(directory: Path | None = None) -> list[Profile]:
    directory = directory or DEFAULT_PROFILES_DIR
    profiles = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
            profiles.append(Profile.model_validate(data))
        except (OSError, yaml.YAMLError) as exc:
            raise ProfileError(f"profile {path}: cannot read: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ProfileError(f"profile {path}: {problems}") from None
        if profiles[-1].name != path.stem:
            raise ProfileError(f"profile {path}: name {profiles[-1].name!r} differs from the file name")
    if not profiles:
        raise ProfileError(f"no profiles in {directory}")
    return profiles


def match_profile(report: HardwareReport, profiles: list[Profile], forced: str | None = None) -> ProfileMatch:
    """Pick the highest-priority profile whose rules all hold; keep why each other one lost."""
    if forced is not None:
        chosen = next((p for p in profiles if p.name == forced), None)
        if chosen is None:
            names = ", ".join(p.name for p in profiles)
            raise ProfileError(f"hw.profile is {forced!r}, which is not a profile; known: {names}")
        return ProfileMatch(chosen, [f"forced by configuration (hw.profile = {forced})"])
    matched: list[tuple[Profile, list[str]]] = []
    rejected: dict[str, str] = {}
    for profile in sorted(profiles, key=lambda p: -p.priority):
        ok, reasons = check_rules(profile.match, report)
        if ok:
            matched.append((profile, reasons))
        else:
            rejected[profile.name] = reasons[-1]
    if not matched:
        raise ProfileError("no profile matches this machine (and no catch-all profile is installed)")
    (winner, reasons), *others = matched
    for profile, _ in others:
        rejected[profile.name] = f"also matches, but priority {profile.priority} < {winner.priority}"
    return ProfileMatch(winner, reasons or ["catch-all profile"], rejected)


def check_rules(rules: MatchRules, report: HardwareReport) -> tuple[bool, list[str]]:
    """Evaluate the rules in order; on failure the last reason says which rule failed."""
    reasons: list[str] = []
    cpu = report.cpu
    checks: list[tuple[bool, str, str]] = []
    if rules.system is not None:
        checks.append((report.system in rules.system, f"system {report.system}", f"system is {report.system}"))
    if rules.arch is not None:
        checks.append((cpu.arch in rules.arch, f"arch {cpu.arch}", f"arch {cpu.arch} not in {rules.arch}"))
    if rules.compatible is not None:
        hit = next((c for c in report.board.compatible for g in rules.compatible if fnmatch.fnmatch(c, g)), None)
        checks.append((hit is not None, f"device tree {hit}", f"no device-tree compatible like {rules.compatible}"))
    if rules.cpu_model is not None:
        name = cpu.model_name or ""
        checks.append((re.search(rules.cpu_model, name) is not None, f"CPU {name}",
                       f"CPU {name!r} does not match /{rules.cpu_model}/"))
    if rules.cpu_flags is not None:
        missing = [f for f in rules.cpu_flags if f not in cpu.flags]
        checks.append((not missing, f"CPU flags {' '.join(rules.cpu_flags)}", f"CPU lacks {' '.join(missing)}"))
    if rules.accelerators is not None:
        missing = [k for k in rules.accelerators if not report.has(k)]
        checks.append((not missing, f"accelerators {' '.join(rules.accelerators)}", f"no {' '.join(missing)}"))
    if rules.max_memory_mb is not None:
        mem = report.memory.total_mb
        checks.append((mem <= rules.max_memory_mb, f"{mem} MiB RAM", f"{mem} MiB RAM > {rules.max_memory_mb}"))
    for ok, good, bad in checks:
        if not ok:
            return False, [*reasons, bad]
        reasons.append(good)
    return True, reasons
