"""The call-flow engine driven like a phone call: greeting, menus by key and by voice, intents in the caller's
own words, slots with spoken numbers, retries, business hours on a fixed clock, transfer, voicemail, hangup;
and bad flow files, each refused with one clear FlowError."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.bot.engine import Action, FlowEngine, Hangup, Listen, Say, StartRecording, Transfer
from appliance.bot.flow import EXAMPLE_FLOW, Flow, FlowError, load_flow, parse_flow
from appliance.bot.intents import IntentMatcher, parse_date, parse_digits, parse_number, yes_no
from appliance.bot.routing import FlowRouter
from appliance.calls import CallInfo, NotReady
from appliance.config.settings import BotSettings
from appliance.config.upstream import UpstreamSettings
from appliance.runtime.routes import Routes
from appliance.voice.readiness import VoiceModels

TUESDAY_10 = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)  # London is on GMT: open


def at(when: datetime) -> Callable[[], datetime]:
    return lambda: when


def said(actions: list[Action]) -> str:
    return " ".join(a.text for a in actions if isinstance(a, Say))


def run(flow: Flow, events: list[tuple[str, str]], when: datetime = TUESDAY_10) -> tuple[FlowEngine, list[Action]]:
    """Start a call and feed it events ("speech"/"dtmf"/"no_input"/"transfer_failed", arg); returns the engine
    and the actions of the last event."""
    async def go() -> tuple[FlowEngine, list[Action]]:
        engine = FlowEngine(flow, clock=at(when))
        actions = await engine.start()
        handlers: dict[str, Callable[..., Awaitable[list[Action]]]] = {
            "speech": engine.on_speech, "dtmf": engine.on_dtmf}
        for kind, arg in events:
            if kind in handlers:
                actions = await handlers[kind](arg)
            elif kind == "no_input":
                actions = await engine.on_no_input()
            else:
                actions = await engine.on_transfer_failed()
        return engine, actions
    return asyncio.run(go())


@pytest.fixture(scope="module")
def example() -> Flow:
    return load_flow(EXAMPLE_FLOW)


def test_example_greets_and_offers_the_menu(example: Flow) -> None:
    engine, actions = run(example, [])
    assert "thank you for calling Example Company" in said(actions)
    assert "press 1" in said(actions) and "press 0" in said(actions)
    assert actions[-1] == Listen(6.0, 1)
    assert engine.step == "main" and not engine.done


def test_opening_hours_by_key_then_goodbye(example: Flow) -> None:
    engine, actions = run(example, [("dtmf", "1")])
    text = said(actions)
    assert "Monday to Friday from 9 AM to 12:30 PM and from 1:30 PM to 5:30 PM" in text
    assert "Saturday from 10 AM to 1 PM" in text and "anything else" in text
    engine, actions = run(example, [("dtmf", "1"), ("speech", "no thanks")])
    assert isinstance(actions[-1], Hangup) and actions[-1].reason == "completed"
    assert "Goodbye" in said(actions)
    record = engine.end()
    assert record.outcome == "completed" and record.steps == ["main", "hours", "anything_else", "goodbye"]
    assert [(t.who, t.kind, t.text) for t in record.turns if t.who == "caller"] == [
        ("caller", "dtmf", "1"), ("caller", "speech", "no thanks")]


@pytest.mark.parametrize(("utterance", "step"), [
    ("what are your hours on saturday", "hours"),
    ("are you open tomorrow morning", "hours"),
    ("option one", "hours"),
    ("I'd like to leave a voice message for the team", "message"),
    ("two please", "message"),
    ("can you call me back later", "message"),
    ("could I talk to a human being please", "agent"),
    ("put me through to customer services", "agent"),
    ("zero", "agent"),
])
def test_menu_by_voice_in_other_words(example: Flow, utterance: str, step: str) -> None:
    engine, _ = run(example, [("speech", utterance)])
    assert engine.record.steps[1] == step


def test_voicemail_records_then_hangs_up(example: Flow) -> None:
    engine, actions = run(example, [("speech", "I want to leave a message")])
    kinds = [type(a) for a in actions]
    assert kinds == [Say, StartRecording, Say, Hangup]
    assert actions[0] == Say(actions[0].text, barge_in=False) and "after the tone" in actions[0].text  # type: ignore[union-attr]
    assert actions[1] == StartRecording(120.0, "voicemail")
    assert engine.done and engine.end().outcome == "voicemail"


def test_transfer_to_the_configured_extension_and_fallback_to_voicemail() -> None:
    flow = load_flow(EXAMPLE_FLOW, variables={"agent": "sip:200@pbx.example.com"})
    engine, actions = run(flow, [("dtmf", "0")])
    assert actions[-1] == Transfer("sip:200@pbx.example.com")
    assert "Please hold" in said(actions) and engine.record.outcome == "transferred"
    engine, actions = run(flow, [("dtmf", "0"), ("transfer_failed", "")])
    assert "nobody is available" in said(actions) and isinstance(actions[-1], Hangup)
    assert engine.record.outcome == "voicemail"


def test_anywhere_intent_and_yes(example: Flow) -> None:
    engine, _ = run(example, [("dtmf", "1"), ("speech", "yes please"), ("speech", "bye then")])
    assert engine.record.steps == ["main", "hours", "anything_else", "main", "goodbye"]
    assert engine.record.intents == ["hours", "yes", "goodbye"]


def test_no_input_reprompts_then_falls_back(example: Flow) -> None:
    engine, actions = run(example, [("no_input", "")])
    assert said(actions).startswith("Sorry, I did not hear anything. For our opening hours")
    assert actions[-1] == Listen(6.0, 1)
    engine, actions = run(example, [("no_input", "")] * 3)
    assert actions[-1] == Transfer("100")  # defaults.fallback: a person
    assert engine.record.steps == ["main", "agent"]


def test_no_match_reprompts_then_falls_back(example: Flow) -> None:
    engine, actions = run(example, [("speech", "the weather in Paris"), ("dtmf", "7")])
    assert said(actions).startswith("Sorry, I did not understand that.") and engine.step == "main"
    engine, actions = run(example, [("speech", "the weather in Paris"), ("dtmf", "7"), ("speech", "purple")])
    assert actions[-1] == Transfer("100")


@pytest.mark.parametrize(("when", "step"), [
    (datetime(2026, 3, 10, 12, 45, tzinfo=UTC), "closed"),  # lunch
    (datetime(2026, 3, 14, 12, 59, tzinfo=UTC), "main"),  # Saturday morning
    (datetime(2026, 3, 15, 11, 0, tzinfo=UTC), "closed"),  # Sunday
    (datetime(2026, 12, 25, 10, 0, tzinfo=UTC), "closed"),  # holiday
    (datetime(2026, 7, 7, 8, 30, tzinfo=UTC), "main"),  # 9:30 in London (summer time)
    (datetime(2026, 1, 6, 8, 30, tzinfo=UTC), "closed"),  # 8:30 in London (winter)
    (datetime(2026, 1, 6, 17, 29, tzinfo=UTC), "main"),
    (datetime(2026, 1, 6, 17, 30, tzinfo=UTC), "closed"),
])
def test_business_hours(example: Flow, when: datetime, step: str) -> None:
    engine, actions = run(example, [], when)
    assert engine.record.steps[0] == step
    if step == "closed":
        assert "We are closed at the moment" in said(actions)
        assert isinstance(actions[-1], Hangup) and any(isinstance(a, StartRecording) for a in actions)


ORDERS = """
name: orders
greeting: Welcome to the order line.
start: ask
variables: {shop: Corner Shop}
anywhere:
  agent: {examples: [talk to a person, speak to someone], goto: agent}
defaults: {fallback: agent, retries: 1}
business_hours:
  timezone: America/New_York
  open: {daily: "00:00-24:00"}
  closed: agent
steps:
  ask:
    slots:
      - name: order
        prompt: Please say or type your six digit order number.
        type: digits
        pattern: '\\d{6}'
        max_digits: 6
        reprompt: That was not six digits. Please try again.
      - {name: quantity, prompt: How many would you like, type: number, pattern: '[1-9]\\d?'}
      - {name: delivery, prompt: When should we deliver, type: date}
      - {name: gift, prompt: Is it a gift, type: yes_no}
      - {name: note, prompt: Any note for the driver, type: text}
    goto: confirm
  confirm:
    hangup: Thank you. Order {order}, {quantity} items on {delivery}, gift {gift}. {shop} says goodbye.
  agent:
    transfer: {target: "sip:queue@pbx"}
"""


@pytest.fixture(scope="module")
def orders() -> Flow:
    return parse_flow(ORDERS, "orders.yaml")


def test_slots_from_spoken_numbers_dates_and_yes(orders: Flow) -> None:
    events = [("speech", "it's one two three, four five six"), ("speech", "twenty five please"),
              ("speech", "next friday"), ("speech", "yeah it is"), ("speech", "Leave it at the back door.")]
    engine, actions = run(orders, events, TUESDAY_10)
    assert engine.slots == {"order": "123456", "quantity": "25", "delivery": "2026-03-13", "gift": "yes",
                            "note": "Leave it at the back door."}
    assert said(actions).startswith("Thank you. Order 123456, 25 items on 2026-03-13, gift yes. Corner Shop says")
    assert engine.end().outcome == "completed"


def test_slots_from_keys(orders: Flow) -> None:
    keys = [("dtmf", d) for d in "12*654321"]  # * starts again; the sixth key completes the entry
    engine, actions = run(orders, [*keys, ("dtmf", "4"), ("dtmf", "#")])
    assert engine.slots == {"order": "654321", "quantity": "4"} and "When should we deliver" in said(actions)
    engine, actions = run(orders, [*keys, ("dtmf", "1"), ("dtmf", "2"), ("no_input", "")])  # a pause ends keys
    assert engine.slots["quantity"] == "12"


def test_slot_reprompt_then_fallback(orders: Flow) -> None:
    engine, actions = run(orders, [("speech", "one two three four five")])
    assert said(actions) == "That was not six digits. Please try again." and actions[-1] == Listen(6.0, 6)
    engine, actions = run(orders, [("speech", "one two three four five"), ("speech", "seven")])
    assert actions[-1] == Transfer("sip:queue@pbx") and "order" not in engine.slots


def test_slot_caller_asks_for_a_person(orders: Flow) -> None:
    engine, actions = run(orders, [("speech", "I just want to speak to someone")])
    assert actions[-1] == Transfer("sip:queue@pbx") and engine.record.intents == ["agent"]
    engine, actions = run(orders, [("speech", "I just want to speak to someone"), ("transfer_failed", "")])
    assert actions == [Hangup("failed")] and engine.done  # its fallback is itself: no endless retrying


LLM_FLOW = """
name: faq
greeting: Hi.
start: ask
steps:
  ask:
    say: What would you like to know?
    intents:
      bye: {examples: [goodbye, that is all], goto: bye}
    llm: {system_prompt: You answer questions about the Corner Shop., max_questions: 2, done: bye}
    fallback: sorry
  sorry:
    hangup: Sorry, I cannot answer that right now. Goodbye.
  bye:
    hangup: Goodbye.
"""


def test_llm_step_without_upstream_goes_to_fallback() -> None:
    engine, actions = run(parse_flow(LLM_FLOW), [])
    assert said(actions) == "Hi. What would you like to know? Sorry, I cannot answer that right now. Goodbye."
    assert engine.record.outcome == "completed" and engine.record.steps == ["ask", "sorry"]


def test_router_defaults_to_the_shipped_example(tmp_path: Path) -> None:
    other = tmp_path / "sales.yaml"
    other.write_text(EXAMPLE_FLOW.read_text().replace("name: example", "name: sales", 1))
    settings = BotSettings(variables={"agent": "sip:7@pbx"}, routes={"200": other}, records_dir=tmp_path / "calls")
    router = FlowRouter(settings, Routes(UpstreamSettings()), VoiceModels())
    assert EXAMPLE_FLOW.is_file() and router.default.variables["agent"] == "sip:7@pbx"
    assert router.flow_for("200").name == "sales" and router.flow_for("999") is router.default
    with pytest.raises(NotReady):  # no voice stack yet: the phone answers 503
        router(CallInfo("c1", "sip:a@b", "200"))
    with pytest.raises(ValidationError):
        BotSettings(flows="x.yaml")  # type: ignore[call-arg]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngreeting: hi\nstart: nowhere\nsteps: {a: {say: hi, hangup: true}}\n")
    with pytest.raises(FlowError):
        FlowRouter(BotSettings(flow=broken, records_dir=tmp_path / "calls"), Routes(UpstreamSettings()), VoiceModels())


# --- bad flows ---------------------------------------------------------------------------------------------------

GOOD = (EXAMPLE_FLOW.read_text())


@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\ngreeting: [unclosed\n", "x.yaml:3: YAML syntax: expected ',' or ']', but got '<stream end>' "
     "(while parsing a flow sequence started at line 2)"),
    (GOOD.replace("  hours:\n", "  main:\n    hangup: Bye.\n  hours:\n"), "duplicate key 'main'"),
    (GOOD.replace("goto: anything_else", "goto: anythin_else"), "steps.hours.goto: no step is named 'anythin_else'"),
    (GOOD.replace("  hours:\n    say:", "  hours:\n    sayy:"), "steps.hours.sayy: Extra inputs are not permitted"),
    (GOOD.replace("Europe/London", "Europe/Londn"), "unknown time zone 'Europe/Londn'"),
    (GOOD.replace('"10:00-13:00"', '"13:00-10:00"'), "ends before it starts"),
    (GOOD.replace("sat:", "fri:"), "friday is listed twice"),
    (GOOD.replace("{company}. I am", "{compnay}. I am"), "greeting: {compnay} is neither a variable nor a slot"),
    (GOOD.replace("{opening_hours}.", "{opening_hours!r}.", 1), "is not a plain {name}"),
    (GOOD.replace('"0":\n', '"10":\n'), "menu key '10' is not one of 0-9"),
    (GOOD.replace("    hangup: Thank you for calling", "    goto: main\n    hangup: Thank you for calling"),
     "hangup ends the step: remove goto"),
    (GOOD.replace("    no: goodbye\n", ""), "needs both `yes` and `no`"),
    (GOOD.replace("    goto: message\n\n  goodbye", "    goto: agent_busy\n\n  goodbye")
     .replace("  agent_busy:\n    say: I am sorry, nobody is available to take your call right now.\n"
              "    goto: message", "  agent_busy:\n    goto: closed"), "gotos loop without ever listening"),
    (GOOD.replace("greeting:", "greting:"), "greeting: Field required"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_flows_give_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(FlowError) as info:
        load_flow(path)
    message = str(info.value)
    assert expected in message and "Traceback" not in message
    assert message.startswith(f"call flow {path} is not valid")


def test_bad_flow_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(GOOD.replace("goto: anything_else", "goto: nowhere"))
    with pytest.raises(FlowError) as info:
        load_flow(path)
    line = next(i for i, text in enumerate(GOOD.splitlines(), 1) if "goto: anything_else" in text)
    assert f"x.yaml:{line}: steps.hours.goto" in str(info.value)


def test_bad_slot_pattern_and_unknown_variable_override(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="bad regular expression"):
        parse_flow(ORDERS.replace("'[1-9]\\d?'", "'[1-9'"))
    with pytest.raises(FlowError, match="variables agnet are not declared"):
        load_flow(EXAMPLE_FLOW, variables={"agnet": "200"})
    with pytest.raises(FlowError, match="cannot read it"):
        load_flow(tmp_path / "missing.yaml")


# --- local understanding -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "digits", "number"), [
    ("one two three", "123", 123), ("twenty five", "25", 25), ("two thousand and six", "2006", 2006),
    ("double five six", "556", 556), ("nineteen eighty four", "1984", 1984), ("one hundred and five", "105", 105),
    ("I have 3 kids", "3", 3), ("it was 1,250 pounds", "1250", 1250), ("no number here", "", None),
    ("oh seven seven", "077", 77), ("twenty-one", "21", 21),
])
def test_spoken_numbers(text: str, digits: str, number: int | None) -> None:
    assert parse_digits(text) == digits and parse_number(text) == number


@pytest.mark.parametrize(("text", "answer"), [
    ("yes please", True), ("yeah", True), ("that's right", True), ("no thank you", False), ("nope", False),
    ("that is not correct", False), ("maybe later", None),
])
def test_yes_no(text: str, answer: bool | None) -> None:
    assert yes_no(text) is answer


@pytest.mark.parametrize(("text", "day"), [
    ("today", date(2026, 3, 10)), ("tomorrow please", date(2026, 3, 11)), ("on friday", date(2026, 3, 13)),
    ("next tuesday", date(2026, 3, 17)), ("the fifth of April", date(2026, 4, 5)),
    ("March twenty first", date(2026, 3, 21)), ("march the second", date(2027, 3, 2)),
    ("2026-05-01", date(2026, 5, 1)), ("whenever", None), ("February 30", None),
])
def test_dates(text: str, day: date | None) -> None:
    assert parse_date(text, date(2026, 3, 10)) == day


def test_intent_threshold_rejects_unrelated_words() -> None:
    matcher = IntentMatcher({"billing": ["question about my bill", "I was charged twice"],
                             "cancel": ["cancel my subscription", "end my contract"]})
    assert matcher.match("my bill is wrong").name == "billing"  # type: ignore[union-attr]
    assert matcher.match("you charged me two times this month").name == "billing"  # type: ignore[union-attr]
    assert matcher.match("I would like to cancel the contract").name == "cancel"  # type: ignore[union-attr]
    assert matcher.match("the weather is nice today") is None
    scores = matcher.scores("cancel")
    assert scores[0].name == "cancel" and scores[0].score > scores[1].score
