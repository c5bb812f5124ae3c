"""The `[upstream]` settings: the datacenter tier's endpoints, and per task the ordered routes to them with their
conditions. The local path is always the last resort and needs no route. One endpoint comes from the short form
(`base_url`, `api_key`, `timeout_s`, `model`): it is called "default", and without `routes` it serves the call
bot's chat and summaries and the translation pairs no on-device model serves."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

RouteTask = Literal["chat", "summary", "translation", "asr"]
DEFAULT_ENDPOINT = "default"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointSettings(_Section):
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://dc.example:8000/v1.")
    api_key: SecretStr | None = Field(None, description="Bearer key (never logged).")
    model: str = Field("default", description="Model name sent with each request.")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Per-request timeout.")
    breaker_failures: int = Field(3, ge=1, le=100, description="Failures in a row that open its circuit breaker.")
    breaker_cooldown_s: float = Field(15.0, gt=0, le=3600, description="Open breaker: seconds until one probe.")


class RouteSettings(_Section):
    endpoint: str = Field(description="An endpoint's name (`default` is the short form's).")
    when: Literal["always", "not-local", "low-confidence"] = Field(
        "always", description="always; not-local: only when no on-device model serves it (a translation pair, "
        "a language); low-confidence: only when the local result's confidence is below min_confidence.")
    min_confidence: float = Field(0.6, ge=0, le=1, description="For low-confidence: the local result's threshold.")
    budget_s: float | None = Field(
        None, gt=0, le=120, description="The most this route may take (the endpoint's timeout is cut to fit); "
        "then the next route, or the local path.")
    pairs: list[str] = Field(default_factory=list, description="Translation only: the pairs it takes, e.g. "
                             "['fr-de']; empty: any.")


class UpstreamSettings(_Section):
    base_url: str | None = Field(
        None, description="OpenAI-compatible upstream tier (e.g. http://dc.example:8000/v1): the endpoint "
        "'default'; off when unset."
    )
    api_key: SecretStr | None = Field(None, description="Bearer key for the upstream tier (never logged).")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Per-request timeout of the endpoint 'default'.")
    model: str = Field("default", description="Model name sent to the endpoint 'default' (formerly bot.llm_model, "
                       "still read).")
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict, description="More endpoints, by name.")
    routes: dict[RouteTask, list[RouteSettings]] | None = Field(
        None, description="Per task (chat, summary, translation, asr), the routes tried in order before the "
        "local path. Unset: chat (budget bot.llm_timeout_s, 3 s), summary and translation (not-local) to "
        "'default' when base_url is set.")
    chat_budget_s: float = Field(3.0, gt=0, le=30, description="Longest a caller waits for an upstream answer "
                                 "before the flow's fallback, when routes are unset (formerly bot.llm_timeout_s).")
    summary: bool = Field(True, description="Summarise finished calls upstream (redacted transcript) when routes "
                          "are unset; otherwise, or when it fails, an extractive summary (formerly bot.llm_summary).")

    @model_validator(mode="after")
    def _known_endpoints(self) -> UpstreamSettings:
        if DEFAULT_ENDPOINT in self.endpoints:
            raise ValueError(f"endpoints: '{DEFAULT_ENDPOINT}' is the short form's name (base_url); pick another")
        names = set(self.endpoints) | ({DEFAULT_ENDPOINT} if self.base_url else set())
        for task, routes in (self.routes or {}).items():
            for route in routes:
                if route.when == "low-confidence" and task != "asr":
                    raise ValueError(f"routes.{task}: when = 'low-confidence' needs a local result with a confidence: "
                                     "only the asr task has one")
                if route.endpoint not in names:
                    raise ValueError(f"routes.{task}: no endpoint named {route.endpoint!r} (known: "
                                     f"{', '.join(sorted(names)) or 'none; set base_url or endpoints'})")
        return self

    def all_endpoints(self) -> dict[str, EndpointSettings]:
        found = dict(self.endpoints)
        if self.base_url:
            found = {DEFAULT_ENDPOINT: EndpointSettings(base_url=self.base_url, api_key=self.api_key,
                                                        model=self.model, timeout_s=self.timeout_s), **found}
        return found

    def all_routes(self) -> dict[RouteTask, list[RouteSettings]]:
        if self.routes is not None:
            return self.routes
        if not self.base_url:
            return {}
        routes: dict[RouteTask, list[RouteSettings]] = {
            "chat": [RouteSettings(endpoint=DEFAULT_ENDPOINT, budget_s=self.chat_budget_s)],
            "translation": [RouteSettings(endpoint=DEFAULT_ENDPOINT, when="not-local")]}
        if self.summary:
            routes["summary"] = [RouteSettings(endpoint=DEFAULT_ENDPOINT)]
        return routes


def fold_bot_llm(data: object) -> object:
    """The former bot.llm_model, bot.llm_timeout_s and bot.llm_summary, read into [upstream] (a file that still
    has them keeps working); the new key wins where both are set."""
    if not isinstance(data, dict) or not isinstance(data.get("bot"), dict):
        return data
    bot = dict(data["bot"])
    moved = {new: bot.pop(old) for old, new in (("llm_model", "model"), ("llm_timeout_s", "chat_budget_s"),
                                                ("llm_summary", "summary")) if old in bot}
    if not moved:
        return data
    upstream = data.get("upstream")
    upstream = dict(upstream) if isinstance(upstream, dict) else {}
    return {**data, "bot": bot, "upstream": {**moved, **upstream}}
