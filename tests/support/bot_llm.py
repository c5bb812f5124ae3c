"""The call bot and an upstream LLM in tests: a small FAQ flow with an `llm` step, a conversation with it, what
was said, and a port nobody listens on."""

from __future__ import annotations

import socket

from appliance.bot.engine import Action, FlowEngine, Say
from appliance.bot.flow import parse_flow
from appliance.bot.upstream import Answerer

FAQ = """
name: faq
greeting: Hello.
start: ask
steps:
  ask:
    say: What would you like to know?
    intents:
      person: {examples: [talk to a person], goto: person}
    llm: {system_prompt: "You answer questions about the Corner Shop in Leeds. It opens at nine in the morning
      and closes at six in the evening, Monday to Saturday.", max_questions: 2, done: bye}
    fallback: person
  person:
    say: Let me find someone for you.
    hangup: Goodbye.
  bye:
    hangup: I hope that helped. Goodbye.
"""


async def converse(llm: Answerer, *utterances: str) -> tuple[FlowEngine, list[list[Action]]]:
    """The FAQ flow with ``llm``: its greeting, then one reply per utterance."""
    engine = FlowEngine(parse_flow(FAQ), llm=llm)
    replies = [await engine.start()]
    for text in utterances:
        replies.append(await engine.on_speech(text))
    return engine, replies


def said(actions: list[Action]) -> str:
    return " ".join(a.text for a in actions if isinstance(a, Say))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
