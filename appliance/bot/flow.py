"""Call flows: a small YAML language of named steps (say, menu, intents, slots, transfer, voicemail, hangup, llm).

``load_flow`` reads and checks a flow; every problem becomes one ``FlowError`` naming the file, line and field,
never a traceback. The example flow shipped with the package is at ``EXAMPLE_FLOW``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.bot.hours import BusinessHours
from appliance.errors import ApplianceError

EXAMPLE_FLOW = Path(__file__).parent / "flows" / "example.yaml"
BUILTIN_VARIABLES = ("opening_hours",)  # filled by the engine: the business hours, spoken
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
SlotType = Literal["digits", "number", "yes_no", "text", "date"]


class FlowError(ApplianceError):
    """A flow file that cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:12] + ([f"… and {len(problems) - 12} more"] if len(problems) > 12 else [])
        super().__init__(f"call flow {source} is not valid:\n  " + "\n  ".join(shown))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MenuChoice(_Model):
    """One key of a menu; callers may also say one of the phrases (or the digit itself)."""

    goto: str = Field(description="Step to go to when this key is pressed or a phrase is said.")
    phrases: list[str] = Field(default_factory=list, description="Spoken ways of choosing this key.")


class Intent(_Model):
    """Something a caller may ask for in their own words, recognised from examples."""

    examples: list[str] = Field(min_length=1, description="Example phrases; paraphrases match too.")
    goto: str = Field(description="Step to go to when the caller's words match.")


class Slot(_Model):
    """A value to collect from the caller, asked for with ``prompt``, stored under ``name`` for {templates}."""

    name: str = Field(pattern=_NAME.pattern, description="Identifier used in {name} templates and the call record.")
    prompt: str = Field(description="The question asked for this value.")
    type: SlotType = Field("text", description="digits (keys or spoken), number, yes_no, text or date.")
    pattern: str | None = Field(None, description="Regular expression the whole value must match, e.g. '\\d{6}'.")
    max_digits: int | None = Field(None, ge=1, le=32, description="Keys that complete a keyed entry without #.")
    reprompt: str | None = Field(None, description="Said when an answer does not fit, before asking again.")
    retries: int | None = Field(None, ge=0, le=10, description="Re-asks before the step's fallback (default: step).")

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r}: {exc}") from None
        return value


class TransferSpec(_Model):
    """Put the caller through to a person (the step's ``say`` is spoken first)."""

    target: str = Field(description="SIP URI or extension of a person or queue, e.g. '{agent}' or sip:100@pbx.")
    on_failure: str | None = Field(None, description="Step when nobody answers or the transfer fails.")


class VoicemailSpec(_Model):
    """Record a message from the caller, then hang up."""

    prompt: str = Field(description="Said before the recording starts (not interruptible).")
    max_s: float = Field(120.0, gt=0, le=600, description="Longest message, seconds.")
    goodbye: str | None = Field(None, description="Said when the recording ends, before hanging up.")


class LlmSpec(_Model):
    """Answer free questions with the upstream language model; any trouble goes to the fallback step."""

    system_prompt: str = Field(description="What the model knows and how it answers (never read to callers).")
    max_questions: int = Field(5, ge=1, le=50, description="Questions answered here before going to ``done``.")
    done: str | None = Field(None, description="Step after max_questions (default: the step's fallback).")


class Defaults(_Model):
    """What every step does unless it says otherwise."""

    timeout_s: float = Field(6.0, gt=0, le=60, description="Seconds of silence before ``no_input``.")
    retries: int = Field(2, ge=0, le=10, description="Re-prompts after no input or no match, then ``fallback``.")
    no_input: str = Field("Sorry, I did not hear anything.", description="Said when the caller is silent.")
    no_match: str = Field("Sorry, I did not understand that.", description="Said when nothing matched.")
    fallback: str | None = Field(None, description="Step after the retries run out; none: say goodbye and hang up.")
    intent_threshold: float = Field(0.38, gt=0, lt=1, description="Lowest similarity (0..1) an intent needs.")


class Step(_Model):
    """A state of the call: optionally say something, then do exactly one kind of thing."""

    say: str | None = Field(None, description="Spoken on entering the step ({slot} and {variable} templates).")
    barge_in: bool = Field(True, description="Whether the caller may interrupt what this step says.")
    goto: str | None = Field(None, description="Next step, straight away (or once all slots are filled).")
    menu: dict[str, MenuChoice] = Field(default_factory=dict, description="Keys 0-9 * # → choices.")
    intents: dict[str, Intent] = Field(default_factory=dict, description="Intent name → examples and step.")
    yes: str | None = Field(None, description="Step when the caller answers yes (or presses 1).")
    no: str | None = Field(None, description="Step when the caller answers no (or presses 2).")
    slots: list[Slot] = Field(default_factory=list, description="Values asked for in order, then ``goto``.")
    llm: LlmSpec | None = Field(None, description="Answer questions with the upstream model.")
    transfer: TransferSpec | None = Field(None, description="Put the caller through to a person.")
    voicemail: VoicemailSpec | None = Field(None, description="Record a message, then hang up.")
    hangup: str | None = Field(None, description="Goodbye said before hanging up.")
    timeout_s: float | None = Field(None, gt=0, le=60, description="Overrides defaults.timeout_s.")
    retries: int | None = Field(None, ge=0, le=10, description="Overrides defaults.retries.")
    no_input: str | None = Field(None, description="Overrides defaults.no_input.")
    no_match: str | None = Field(None, description="Overrides defaults.no_match.")
    fallback: str | None = Field(None, description="Overrides defaults.fallback.")

    @field_validator("menu", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            value = {str(k): ({"goto": v} if isinstance(v, str) else v) for k, v in value.items()}
            for key in value:
                if key not in "0123456789*#" or len(key) != 1:
                    raise ValueError(f"menu key {key!r} is not one of 0-9, * or #")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        terminal = [n for n in ("transfer", "voicemail", "hangup") if getattr(self, n) is not None]
        listens = bool(self.menu or self.intents or self.yes or self.no)
        if (self.yes is None) != (self.no is None):
            raise ValueError("a yes/no question needs both `yes` and `no`")
        if len(terminal) > 1:
            raise ValueError(f"a step can only do one of {' and '.join(terminal)}")
        others = [n for n, on in (("goto", self.goto), ("menu/intents/yes/no", listens), ("slots", self.slots),
                                  ("llm", self.llm)) if on]
        if terminal and others:
            raise ValueError(f"{terminal[0]} ends the step: remove {', '.join(others)}")
        if self.slots and (listens or self.llm):
            raise ValueError("a step with slots cannot also have a menu, intents, yes/no or llm")
        if self.slots and not self.goto:
            raise ValueError("a step with slots needs `goto`: where to go once they are filled")
        if self.goto and (listens or self.llm) and not self.slots:
            raise ValueError("`goto` leaves at once: it cannot be combined with a menu, intents, yes/no or llm")
        if not (terminal or others):
            raise ValueError("the step has no next: add goto, menu, intents, yes/no, slots, llm, "
                             "transfer, voicemail or hangup")
        return self

    @property
    def listens(self) -> bool:
        return bool(self.menu or self.intents or self.yes or self.slots or self.llm)


class Flow(_Model):
    """A call flow: the greeting, business hours, variables, defaults and named steps."""

    name: str = Field(description="Name shown in call records.")
    language: str = Field("en", description="Language the callers speak and the bot answers in (ISO 639-1).")
    greeting: str = Field(description="Said once when the call is answered.")
    start: str = Field(description="First step after the greeting (when open).")
    variables: dict[str, str] = Field(default_factory=dict, description="Values for {name} in any text.")
    defaults: Defaults = Field(default_factory=Defaults, description="Timeouts, retries and messages.")
    business_hours: BusinessHours | None = Field(None, description="Opening hours; none: always open.")
    anywhere: dict[str, Intent] = Field(
        default_factory=dict, description="Intents recognised in every step that listens (e.g. agent, goodbye)."
    )
    steps: dict[str, Step] = Field(min_length=1, description="Step name → step.")

    def step(self, name: str) -> Step:
        return self.steps[name]


# --- templates -------------------------------------------------------------------------------------------

def placeholders(text: str) -> list[str]:
    """The {names} used in ``text``; ValueError for malformed braces or anything but a plain name."""
    names = []
    for _, field, spec, conversion in string.Formatter().parse(text):
        if field is None:
            continue
        if not _NAME.match(field) or spec or conversion:
            raise ValueError(f"template {{{field}}} is not a plain {{name}} (write {{{{ and }}}} for braces)")
        names.append(field)
    return names


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill {names} from ``values``; an unknown or unfilled name becomes empty text."""
    out = []
    for literal, field, _, _ in string.Formatter().parse(text):
        out.append(literal)
        if field is not None:
            out.append(str(values.get(field, "")))
    return " ".join("".join(out).split())


# --- checks across fields ----------------------------------------------------------------------------------

def _texts(flow: Flow) -> Iterator[tuple[tuple[Any, ...], str]]:
    yield ("greeting",), flow.greeting
    yield ("defaults", "no_input"), flow.defaults.no_input
    yield ("defaults", "no_match"), flow.defaults.no_match
    for name, step in flow.steps.items():
        at = ("steps", name)
        for key in ("say", "hangup", "no_input", "no_match"):
            if getattr(step, key):
                yield (*at, key), getattr(step, key)
        for i, slot in enumerate(step.slots):
            yield (*at, "slots", i, "prompt"), slot.prompt
            if slot.reprompt:
                yield (*at, "slots", i, "reprompt"), slot.reprompt
        if step.transfer:
            yield (*at, "transfer", "target"), step.transfer.target
        if step.voicemail:
            yield (*at, "voicemail", "prompt"), step.voicemail.prompt
            if step.voicemail.goodbye:
                yield (*at, "voicemail", "goodbye"), step.voicemail.goodbye


def _links(flow: Flow) -> Iterator[tuple[tuple[Any, ...], str]]:
    yield ("start",), flow.start
    if flow.defaults.fallback:
        yield ("defaults", "fallback"), flow.defaults.fallback
    if flow.business_hours:
        yield ("business_hours", "closed"), flow.business_hours.closed
    for name, intent in flow.anywhere.items():
        yield ("anywhere", name, "goto"), intent.goto
    for name, step in flow.steps.items():
        at = ("steps", name)
        for key in ("goto", "yes", "no", "fallback"):
            if getattr(step, key):
                yield (*at, key), getattr(step, key)
        for key, choice in step.menu.items():
            yield (*at, "menu", key, "goto"), choice.goto
        for intent_name, intent in step.intents.items():
            yield (*at, "intents", intent_name, "goto"), intent.goto
        if step.transfer and step.transfer.on_failure:
            yield (*at, "transfer", "on_failure"), step.transfer.on_failure
        if step.llm and step.llm.done:
            yield (*at, "llm", "done"), step.llm.done


def check_flow(flow: Flow) -> list[tuple[tuple[Any, ...], str]]:
    """Mistakes no single field shows: unknown steps, unknown {names}, loops of gotos that never listen."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    for path, target in _links(flow):
        if target not in flow.steps:
            problems.append((path, f"no step is named {target!r} (steps: {', '.join(flow.steps)})"))
    known = set(flow.variables) | set(BUILTIN_VARIABLES)
    known |= {slot.name for step in flow.steps.values() for slot in step.slots}
    for path, text in _texts(flow):
        try:
            names = placeholders(text)
        except ValueError as exc:
            problems.append((path, str(exc)))
            continue
        for n in names:
            if n == "opening_hours" and not flow.business_hours:
                problems.append((path, "{opening_hours} needs business_hours"))
            elif n not in known:
                problems.append((path, f"{{{n}}} is neither a variable nor a slot"))
    for name in flow.steps:
        seen, current = [name], flow.steps[name].goto
        while current in flow.steps and not flow.steps[current].listens and not flow.steps[current].slots:
            if current in seen:
                problems.append((("steps", name, "goto"), "gotos loop without ever listening: "
                                 + " → ".join([*seen, current])))
                break
            seen.append(current)
            current = flow.steps[current].goto
    return problems


# --- YAML with line numbers --------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe YAML that rejects duplicate keys and reads yes/no/on/off as words (YAML 1.2), not booleans."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _line(root: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The line (1-based) of the deepest YAML node along ``path``."""
    node, line = root, root.start_mark.line + 1 if root is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if str(k.value) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _where(source: str, root: yaml.Node | None, path: tuple[Any, ...]) -> str:
    line = _line(root, path)
    field = ".".join(str(p) for p in path)
    return f"{source}:{line}: {field}" if line else f"{source}: {field or '(top)'}"


def parse_flow(text: str, source: str = "<flow>", variables: Mapping[str, str] | None = None) -> Flow:
    """Parse and check a flow from YAML text; ``variables`` override the flow's own (e.g. from settings)."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = str(getattr(exc, "problem", None) or exc)
        opened = getattr(exc, "context", None)
        if opened and context is not None and mark is not None and context.line != mark.line:
            problem += f" ({opened} started at line {context.line + 1})"
        raise FlowError(source, [f"{where}: YAML syntax: {problem}"]) from None
    if not isinstance(data, dict):
        raise FlowError(source, [f"{source}: expected a mapping with name, greeting, start and steps"])
    if variables:
        unknown = sorted(set(variables) - set(data.get("variables") or {}))
        if unknown:
            raise FlowError(source, [f"{source}: variables {', '.join(unknown)} are not declared by the flow"])
        data["variables"] = {**(data.get("variables") or {}), **variables}
    try:
        flow = Flow.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "str"))))
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{_where(source, root, path)}: {message}")
        raise FlowError(source, problems) from None
    found = check_flow(flow)
    if found:
        raise FlowError(source, [f"{_where(source, root, path)}: {message}" for path, message in found])
    return flow


def load_flow(path: Path | str, variables: Mapping[str, str] | None = None) -> Flow:
    """Read and check the flow at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError(str(path), [f"cannot read it: {exc}"]) from None
    return parse_flow(text, str(path), variables)
