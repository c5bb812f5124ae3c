"""The device's upstream routes: settings (the short form, named endpoints, the former bot.llm_* keys, refused
mistakes), the plan for a piece of work (conditions, open breakers skipped, budgets), reloads that keep the
breakers, what /health and /metrics show; and the bot's routed client failing over between two real HTTP peers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from pydantic import ValidationError

from appliance.api.app import create_app
from appliance.api.context import ApiServices
from appliance.api.keys import KeyStore
from appliance.bot.routed import RoutedLlm
from appliance.bot.upstream import UpstreamError
from appliance.config.settings import ApiSettings, Settings
from appliance.config.upstream import UpstreamSettings
from appliance.runtime.routes import Routes
from appliance.sessions.interpreter import Interpreter
from appliance.voice.conversation import Caption
from appliance.voice.listener import Transcript
from appliance.voice.mt import UpstreamTranslator
from appliance.voice.readiness import VoiceModels
from tests.support.bot_llm import closed_port
from tests.support.fakes import Spoken
from tests.support.openai_peer import OpenAiPeer

KEY = "sk-routes-51c2"


def two(first: str, second: str, budget_s: float = 2.0) -> UpstreamSettings:
    return UpstreamSettings.model_validate({
        "endpoints": {"site": {"base_url": first, "api_key": KEY, "timeout_s": 5, "breaker_failures": 1},
                      "backup": {"base_url": second, "model": "big"}},
        "routes": {"chat": [{"endpoint": "site", "budget_s": budget_s}, {"endpoint": "backup"}],
                   "translation": [{"endpoint": "backup", "when": "not-local", "pairs": ["fr-de"]}]}})


def test_the_short_form_and_the_former_bot_keys() -> None:
    settings = Settings.model_validate({"upstream": {"base_url": "http://dc/v1"},
                                        "bot": {"llm_model": "gemma", "llm_timeout_s": 2.5, "llm_summary": False}})
    routes = Routes(settings.upstream)
    assert routes.endpoints["default"].model == "gemma"
    assert sorted(routes.routes) == ["chat", "translation"]  # no summary: bot.llm_summary was false
    assert routes.routes["chat"][0].timeout_s() == 2.5 and routes.routes["translation"][0].settings.when == "not-local"
    assert Routes(UpstreamSettings()).snapshot() == {"endpoints": {}, "routes": {}}  # no upstream: all local


@pytest.mark.parametrize("upstream, says", [
    ({"routes": {"chat": [{"endpoint": "dc"}]}}, "no endpoint named 'dc'"),
    ({"endpoints": {"default": {"base_url": "http://x/v1"}}}, "'default' is the short form's name"),
    ({"base_url": "http://x/v1", "routes": {"chat": [{"endpoint": "default", "when": "low-confidence"}]}},
     "only the asr task has one"),
    ({"base_url": "http://x/v1", "routes": {"speech": [{"endpoint": "default"}]}}, "routes.speech"),
])
def test_mistakes_are_refused_with_the_reason(upstream: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings.model_validate({"upstream": upstream})


def test_the_plan_applies_conditions_and_skips_open_breakers() -> None:
    routes = Routes(two("http://a/v1", "http://b/v1"))
    assert [r.endpoint.name for r in routes.plan("chat", local=False)] == ["site", "backup"]
    assert routes.plan("translation", local=True, pair="fr-de") == []  # a device model serves it: local
    assert [r.endpoint.name for r in routes.plan("translation", local=False, pair="fr-de")] == ["backup"]
    assert routes.plan("translation", local=False, pair="en-ja") == []  # not a pair the route takes
    routes.endpoints["site"].breaker.failed()  # breaker_failures = 1: open
    assert [r.endpoint.name for r in routes.plan("chat", local=False)] == ["backup"]
    assert routes.snapshot(full=False) == {"endpoints": {"site": "open", "backup": "closed"}}
    full = routes.snapshot()
    assert full["routes"]["chat"][0] == {"endpoint": "site", "when": "always", "budget_s": 2.0, "pairs": []}
    assert KEY not in str(full) and full["endpoints"]["site"]["breaker"]["trips"] == 1
    metrics = generate_latest(routes.registry).decode()
    assert 'appliance_upstream_breaker_state{endpoint="site"} 2.0' in metrics


def test_a_reload_keeps_the_breakers_of_unchanged_endpoints() -> None:
    routes = Routes(two("http://a/v1", "http://b/v1"))
    site, backup = routes.endpoints["site"].breaker, routes.endpoints["backup"].breaker
    routes.configure(two("http://a/v1", "http://c/v1"))  # backup moved
    assert routes.endpoints["site"].breaker is site and routes.endpoints["backup"].breaker is not backup


def test_the_bot_fails_over_to_the_next_route_within_the_first_budget(peer: OpenAiPeer) -> None:
    routes = Routes(two(f"http://127.0.0.1:{closed_port()}/v1", peer.url))
    llm = RoutedLlm(routes, "chat")

    async def ask() -> str:
        try:
            return await llm.answer("You answer for the Corner Shop.", "when do you open")
        finally:
            await llm.aclose()

    assert asyncio.run(ask()) == "We open at nine."
    assert peer.requests[0]["model"] == "big" and KEY not in str(peer.auth)  # backup's own model; not site's key
    metrics = generate_latest(routes.registry).decode()
    assert 'appliance_upstream_requests_total{endpoint="site",outcome="unavailable",task="chat"} 1.0' in metrics
    assert 'appliance_upstream_requests_total{endpoint="backup",outcome="ok",task="chat"} 1.0' in metrics
    # The site's breaker is open now: the next call goes straight to backup; with both down, the budget holds.
    peer.delay_s = 10
    llm = RoutedLlm(routes, "chat")
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="timeout"):
        asyncio.run(ask())
    assert time.monotonic() - started < 2.0 + 0.5 and len(peer.requests) == 2
    assert 'appliance_upstream_fallbacks_total{reason="timeout",task="chat"} 1.0' in \
        generate_latest(routes.registry).decode()


def test_health_shows_the_breakers_and_metrics_count_them(tmp_path: Path) -> None:
    routes = Routes(two("http://a/v1", "http://b/v1"))
    routes.endpoints["site"].breaker.failed()
    keys = KeyStore(tmp_path / "keys.json")
    _, token = keys.create("ops")
    services = ApiServices(ApiSettings(), keys, VoiceModels(), list, standalone=False, routes=routes)
    services.registry.register(routes.registry)  # as `appliance run` wires it
    with TestClient(create_app(services)) as client:
        assert client.get("/health").json()["upstream"] == {"endpoints": {"site": "open", "backup": "closed"}}
        full = client.get("/health", headers={"Authorization": f"Bearer {token}"}).json()["upstream"]
        assert full["routes"]["chat"][1]["endpoint"] == "backup" and KEY not in json.dumps(full)
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert 'appliance_upstream_breaker_opened{endpoint="site"} 1.0' in metrics


def test_an_interpretation_goes_on_when_its_upstream_translator_fails() -> None:
    routes = Routes(UpstreamSettings(base_url=f"http://127.0.0.1:{closed_port()}/v1", timeout_s=1.0))
    spoken = Spoken()
    interpreter = Interpreter("fr", "de", UpstreamTranslator(routes), spoken.output, spoken.say)
    final = Transcript(1, "Le magasin ouvre à neuf heures.", "Le magasin ouvre à neuf heures.", True, 0.0, 1.0)
    assert asyncio.run(interpreter.respond(final)) is None  # nothing to speak, no exception: the call goes on
    assert spoken.out == [Caption(1, "Le magasin ouvre à neuf heures.", "", True)]
    assert 'appliance_upstream_fallbacks_total{reason="unavailable",task="translation"} 1.0' in \
        generate_latest(routes.registry).decode()
