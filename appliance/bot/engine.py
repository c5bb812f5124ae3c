"""The flow engine: one per call, it turns what the caller does into what the call does next.

The transport feeds events (``start``, final transcripts, key presses, silence, a failed transfer) and performs
the actions returned, in order: ``Say`` (done when played or interrupted), ``Listen`` (wait for the caller: once
what came before is played, start a no-input timer, restarted by each key and by speech; when it runs out call
``on_no_input``), ``Transfer`` (report a failure with ``on_transfer_failed``), ``StartRecording`` (done when the
time is up, the caller presses # or hangs up), ``Hangup``. An empty list means: keep listening. Every handler is
a coroutine because an answer may come from the upstream LLM; events are handled one at a time. The engine knows
no transport and keeps the call's record (turns, slots, steps, intents, outcome) in ``record``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from appliance.bot.flow import Flow, Slot, Step, render
from appliance.bot.intents import IntentMatcher, normalize, parse_date, parse_digits, parse_number, yes_no
from appliance.bot.records import CallRecord, Turn, Who
from appliance.bot.upstream import Answerer, UpstreamError

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]  # returns an aware datetime
MAX_HOPS = 32  # steps entered for one event: more means fallbacks loop
_CHOOSE = re.compile(r"^(?:(?:option|number|press|pressing|key|the|please|um|uh|i|choose|pick|want)\s+)*(\w+)"
                     r"(?:\s+please)?$")


@dataclass(frozen=True)
class Say:
    text: str
    barge_in: bool = True  # the caller may interrupt it


@dataclass(frozen=True)
class Listen:
    timeout_s: float  # silence before on_no_input
    dtmf_max_digits: int | None = None  # keys an answer takes at most (menus: 1); None: ended by # or a pause


@dataclass(frozen=True)
class Transfer:
    target: str  # SIP URI or extension; report a failure with on_transfer_failed


@dataclass(frozen=True)
class StartRecording:
    max_s: float
    kind: str = "voicemail"


@dataclass(frozen=True)
class Hangup:
    reason: str  # completed, voicemail, gave_up, failed


Action = Say | Listen | Transfer | StartRecording | Hangup


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FlowEngine:
    """Runs ``flow`` for one call. ``clock`` decides business hours and timestamps; ``llm`` answers llm steps
    (without it they go straight to their fallback)."""

    def __init__(self, flow: Flow, clock: Clock = _utcnow, llm: Answerer | None = None, call_id: str = "",
                 caller: str | None = None) -> None:
        self.flow, self.clock, self.llm = flow, clock, llm
        self.record = CallRecord(call_id, flow.name, clock(), caller=caller)
        self._lock = asyncio.Lock()
        self._step: str | None = None
        self._slot = self._attempts = self._questions = 0
        self._keys = ""
        self._history: list[tuple[str, str]] = []
        self._matchers: dict[str, IntentMatcher] = {}
        self._anywhere = IntentMatcher({n: i.examples for n, i in flow.anywhere.items()},
                                       flow.defaults.intent_threshold) if flow.anywhere else None
        self._variables = dict(flow.variables)
        if flow.business_hours:
            self._variables["opening_hours"] = flow.business_hours.describe()
        self.done = False

    @property
    def step(self) -> str | None:
        """The step the call is in."""
        return self._step

    @property
    def slots(self) -> dict[str, str]:
        return self.record.slots

    # --- events ------------------------------------------------------------------------------------------------

    async def start(self) -> list[Action]:
        """The call was answered: the greeting, then the first step (or the closed step outside hours)."""
        async with self._lock:
            if self._step is not None:
                return []
            actions: list[Action] = [Say(self._render(self.flow.greeting))]
            hours = self.flow.business_hours
            if hours is not None and not hours.is_open(self.clock()):
                self._log("system", "outside business hours", "event")
                return self._emit(actions + self._enter(hours.closed))
            return self._emit(actions + self._enter(self.flow.start))

    async def on_speech(self, text: str) -> list[Action]:
        """A final transcript of what the caller said."""
        async with self._lock:
            text = " ".join(text.split())
            if self.done or self._step is None or not text:
                return []
            self._log("caller", text, "speech")
            step = self._current()
            if step.slots:
                return self._emit(self._fill(step, text))
            label, target = self._route(step, text)
            if target is not None:
                return self._emit(self._choose(label, target))
            if step.llm is not None:
                return self._emit(await self._answer(step, text))
            return self._emit(self._retry(step, "no_match"))

    async def on_dtmf(self, digit: str) -> list[Action]:
        """A key the caller pressed (0-9, *, #)."""
        async with self._lock:
            if self.done or self._step is None or len(digit) != 1 or digit not in "0123456789*#":
                return []
            self._log("caller", digit, "dtmf")
            step = self._current()
            if step.slots:
                return self._emit(self._key_for_slot(step, digit))
            if digit in step.menu:
                return self._emit(self._choose(step.menu[digit].goto, step.menu[digit].goto))
            if step.yes and step.no and digit in "12":
                return self._emit(self._choose("yes" if digit == "1" else "no", step.yes if digit == "1" else step.no))
            return self._emit(self._retry(step, "no_match"))

    async def on_no_input(self) -> list[Action]:
        """The caller said and pressed nothing for the Listen's timeout."""
        async with self._lock:
            if self.done or self._step is None:
                return []
            self._log("caller", "", "no_input")
            step = self._current()
            if step.slots and self._keys:  # keys typed without # at the end
                return self._emit(self._fill(step, self._keys, keyed=True))
            return self._emit(self._retry(step, "no_input"))

    async def on_transfer_failed(self) -> list[Action]:
        """The transfer was refused or not answered: the step's on_failure, else its fallback."""
        async with self._lock:
            step = self._current() if self._step else None
            if step is None or step.transfer is None:
                return []
            self.done, self.record.outcome = False, "in_progress"
            self._log("system", "transfer failed", "event")
            target = step.transfer.on_failure or step.fallback or self.flow.defaults.fallback
            if target is None or target == self._step:  # never try the same transfer forever
                return self._emit(self._finish([], "failed"))
            return self._emit(self._enter(target))

    def end(self, outcome: str = "abandoned") -> CallRecord:
        """The call is over (the caller hung up, or after Hangup/Transfer): the finished record."""
        if self.record.outcome == "in_progress":
            self.record.outcome = outcome
        self.done = True
        self.record.ended_at = self.record.ended_at or self.clock()
        return self.record

    # --- steps -------------------------------------------------------------------------------------------------

    def _current(self) -> Step:
        assert self._step is not None
        return self.flow.steps[self._step]

    def _enter(self, name: str) -> list[Action]:
        actions: list[Action] = []
        for _ in range(MAX_HOPS):
            step = self.flow.steps[name]
            self._step, self._slot, self._attempts, self._questions, self._keys = name, 0, 0, 0, ""
            self.record.steps.append(name)
            if step.say:
                actions.append(Say(self._render(step.say), step.barge_in))
            if step.transfer:
                self.done, self.record.outcome = True, "transferred"
                return [*actions, Transfer(self._render(step.transfer.target))]
            if step.voicemail:
                mail = step.voicemail
                actions += [Say(self._render(mail.prompt), barge_in=False), StartRecording(mail.max_s)]
                actions += [Say(self._render(mail.goodbye), barge_in=False)] if mail.goodbye else []
                return self._finish(actions, "voicemail")
            if step.hangup is not None:
                return self._finish([*actions, Say(self._render(step.hangup), barge_in=False)], "completed")
            if step.slots:
                return actions + self._ask(step)
            if step.llm and self.llm is None:
                self._log("system", "no upstream LLM configured", "event")
                fallback = step.fallback or self.flow.defaults.fallback
                if not fallback or fallback == name:
                    return self._finish(actions, "gave_up")
                name = fallback
                continue
            if step.listens:
                return [*actions, self._listen(step)]
            assert step.goto is not None
            name = step.goto
        log.error("flow %s: more than %d steps without listening; hanging up", self.flow.name, MAX_HOPS)
        return self._finish(actions, "failed")

    def _finish(self, actions: list[Action], reason: str) -> list[Action]:
        self.done = True
        if self.record.outcome == "in_progress":
            self.record.outcome = "failed" if reason in ("gave_up", "failed") else reason
        return [*actions, Hangup(reason)]

    def _listen(self, step: Step) -> Listen:
        timeout = step.timeout_s or self.flow.defaults.timeout_s
        if step.slots:
            slot = step.slots[self._slot]
            keyed = slot.type in ("digits", "number")
            return Listen(timeout, slot.max_digits if keyed else 1 if slot.type == "yes_no" else None)
        return Listen(timeout, 1 if step.menu or step.yes else None)

    def _ask(self, step: Step) -> list[Action]:
        return [Say(self._render(step.slots[self._slot].prompt)), self._listen(step)]

    def _choose(self, label: str, target: str) -> list[Action]:
        self.record.intents.append(label)
        return self._enter(target)

    def _route(self, step: Step, text: str) -> tuple[str, str | None]:
        """(label, step) for what the caller chose in words, or ("", None)."""
        spoken = _CHOOSE.match(normalize(text))
        key = parse_digits(spoken.group(1)) if spoken else ""
        if key in step.menu:
            return step.menu[key].goto, step.menu[key].goto
        matcher = self._matcher(step)
        found = matcher.match(text) if matcher else None
        if found is not None:
            return (found.name, step.intents[found.name].goto) if found.name in step.intents else \
                (step.menu[found.name[5:]].goto, step.menu[found.name[5:]].goto)
        answer = yes_no(text) if step.yes and step.no else None
        if answer is not None:
            return ("yes", step.yes) if answer else ("no", step.no)
        found = self._anywhere.match(text) if self._anywhere else None
        if found is not None:
            return found.name, self.flow.anywhere[found.name].goto
        return "", None

    def _matcher(self, step: Step) -> IntentMatcher | None:
        assert self._step is not None
        if self._step not in self._matchers:
            examples = {name: intent.examples for name, intent in step.intents.items()}
            examples |= {f"menu:{key}": choice.phrases for key, choice in step.menu.items() if choice.phrases}
            if not examples:
                return None
            self._matchers[self._step] = IntentMatcher(examples, self.flow.defaults.intent_threshold)
        return self._matchers[self._step]

    # --- slots -------------------------------------------------------------------------------------------------

    def _key_for_slot(self, step: Step, digit: str) -> list[Action]:
        slot = step.slots[self._slot]
        if slot.type == "yes_no" and digit in "12":
            return self._fill(step, "yes" if digit == "1" else "no", keyed=True)
        if slot.type not in ("digits", "number"):
            return self._retry(step, "no_match")
        if digit == "*":  # start again
            self._keys = ""
            return []
        if digit == "#":
            keys, self._keys = self._keys, ""
            return self._fill(step, keys, keyed=True) if keys else self._retry(step, "no_match")
        self._keys += digit
        if slot.max_digits and len(self._keys) >= slot.max_digits:
            keys, self._keys = self._keys, ""
            return self._fill(step, keys, keyed=True)
        return []

    def _value(self, slot: Slot, text: str) -> str | None:
        value: str | None
        if slot.type == "digits":
            value = parse_digits(text) or None
        elif slot.type == "number":
            number = parse_number(text)
            value = None if number is None else str(number)
        elif slot.type == "yes_no":
            answer = yes_no(text)
            value = None if answer is None else "yes" if answer else "no"
        elif slot.type == "date":
            zone = ZoneInfo(self.flow.business_hours.timezone) if self.flow.business_hours else UTC
            found = parse_date(text, self.clock().astimezone(zone).date())
            value = found.isoformat() if found else None
        else:
            value = text.strip() or None
        if value is not None and slot.pattern and not re.fullmatch(slot.pattern, value):
            return None
        return value

    def _fill(self, step: Step, text: str, keyed: bool = False) -> list[Action]:
        slot = step.slots[self._slot]
        self._keys = ""
        if not keyed and self._anywhere and slot.type == "text":  # "agent!" is not anybody's name
            found = self._anywhere.match(text)
            if found is not None:
                return self._choose(found.name, self.flow.anywhere[found.name].goto)
        value = self._value(slot, text)
        if value is None:
            found = self._anywhere.match(text) if self._anywhere and not keyed else None
            if found is not None:
                return self._choose(found.name, self.flow.anywhere[found.name].goto)
            return self._retry(step, "no_match")
        self.record.slots[slot.name] = value
        self._slot, self._attempts = self._slot + 1, 0
        if self._slot < len(step.slots):
            return self._ask(step)
        assert step.goto is not None
        return self._enter(step.goto)

    # --- trouble -----------------------------------------------------------------------------------------------

    def _retry(self, step: Step, why: str) -> list[Action]:
        """Say sorry and ask again, or after the retries go to the fallback step."""
        self._attempts += 1
        self._keys = ""
        slot = step.slots[self._slot] if step.slots else None
        retries = slot.retries if slot and slot.retries is not None else step.retries
        if self._attempts > (retries if retries is not None else self.flow.defaults.retries):
            self._log("system", f"{why}: retries used up", "event")
            return self._fallback(step)
        sorry = getattr(step, why) or getattr(self.flow.defaults, why)
        if slot is not None:
            again = [Say(self._render(slot.reprompt))] if slot.reprompt and why == "no_match" else \
                [Say(self._render(sorry)), Say(self._render(slot.prompt))]
        else:
            again = [Say(self._render(sorry))] + ([Say(self._render(step.say), step.barge_in)] if step.say else [])
        return [*again, self._listen(step)]

    def _fallback(self, step: Step) -> list[Action]:
        target = step.fallback or self.flow.defaults.fallback
        if target is None or target == self._step:
            return self._finish([], "gave_up")
        return self._enter(target)

    async def _answer(self, step: Step, text: str) -> list[Action]:
        assert step.llm is not None and self.llm is not None
        try:
            async with asyncio.timeout(self.llm.timeout_s + 0.25):  # a backstop: clients time out themselves
                answer = await self.llm.answer(step.llm.system_prompt, text, self._history)
        except (UpstreamError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, UpstreamError) else "timeout"
            self._log("system", f"LLM fallback: {reason}", "event")
            return self._fallback(step)
        except Exception:
            log.exception("LLM answer failed")
            self._log("system", "LLM fallback: error", "event")
            return self._fallback(step)
        self._history.append((text, answer))
        self._questions += 1
        if self._questions >= step.llm.max_questions:
            target = step.llm.done or step.fallback or self.flow.defaults.fallback
            return [Say(answer), *(self._enter(target) if target else self._finish([], "completed"))]
        return [Say(answer), self._listen(step)]

    # --- helpers -----------------------------------------------------------------------------------------------

    def _render(self, text: str) -> str:
        return render(text, {**self._variables, **self.record.slots})

    def _log(self, who: Who, text: str, kind: str) -> None:
        self.record.turns.append(Turn(who, text, self.clock(), kind))

    def _emit(self, actions: list[Action]) -> list[Action]:
        """Note each action in the call's turn log, and return them."""
        for action in actions:
            if isinstance(action, Say):
                self._log("bot", action.text, "say")
            elif isinstance(action, Transfer):
                self._log("system", action.target, "transfer")
            elif isinstance(action, StartRecording):
                self._log("system", f"{action.kind} up to {action.max_s:g} s", "recording")
            elif isinstance(action, Hangup):
                self._log("system", action.reason, "hangup")
        return actions
