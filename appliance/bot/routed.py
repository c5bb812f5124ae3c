"""The call bot's LLM through the device's upstream routes: a task's routes (chat for `llm` steps, summary for
call records) tried in order within the first route's budget, each endpoint through its own client (its circuit
breaker is the route's: an answer the guards refuse is no failure of the link); when none answers,
``UpstreamError`` and the flow goes on at its fallback (the local path)."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.bot.upstream import LlmClient, UpstreamError, UpstreamOptions
from appliance.config.upstream import RouteTask
from appliance.runtime.routes import Endpoint, Routes

FINAL = ("injection",)  # the caller's words, not the upstream: no other route would do better
LINK = ("timeout", "unavailable")  # the endpoint did not answer: its breaker counts these


class RoutedLlm:
    """An ``Answerer`` (and ``Summarizer``) for one task of ``routes``."""

    def __init__(self, routes: Routes, task: RouteTask, **options: object) -> None:
        self.routes, self.task, self.options = routes, task, options
        self._clients: dict[str, tuple[Endpoint, LlmClient]] = {}
        self._stale: list[LlmClient] = []  # clients of endpoints a reload changed, closed with this

    @property
    def timeout_s(self) -> float:
        """The most this task may take: its first route's budget (the engine's backstop adds a little)."""
        return self.routes.budget(self.task)

    def _client(self, endpoint: Endpoint) -> LlmClient:
        known = self._clients.get(endpoint.name)
        if known is None or known[0] != endpoint:  # new, or its settings changed with a reload
            if known is not None:
                self._stale.append(known[1])
            client = LlmClient(UpstreamOptions(endpoint.base_url, endpoint.api_key, endpoint.model,
                                               endpoint.settings.timeout_s, **self.options))  # type: ignore[arg-type]
            self._clients[endpoint.name] = known = (endpoint, client)
        return known[1]

    async def _try(self, call: str, *args: object) -> str:
        plan = self.routes.plan(self.task, local=False)  # no chat model on the device: the flow's fallback is local
        if not plan:
            reason = "breaker open" if self.routes.has(self.task) else "no route"
            raise UpstreamError(reason, f"no upstream route for {self.task} is usable now")
        error = UpstreamError("timeout", "no time left in the budget")
        for attempt in self.routes.attempts(self.task, plan):
            try:
                answer: str = await getattr(self._client(attempt.route.endpoint), call)(*args,
                                                                                         timeout_s=attempt.timeout_s)
            except UpstreamError as exc:
                error = exc
                if exc.reason in FINAL:  # the caller's words never left the device
                    attempt.dropped(exc.reason)
                    break
                if exc.reason in LINK:
                    attempt.failed(exc.reason)
                else:
                    attempt.refused(exc.reason)
                continue
            attempt.ok()
            return answer
        self.routes.fell_back(self.task, error.reason)
        raise error

    async def answer(self, system_prompt: str, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
        return await self._try("answer", system_prompt, question, history)

    async def summarize(self, transcript: str) -> str:
        return await self._try("summarize", transcript)

    async def aclose(self) -> None:
        for client in [*self._stale, *(c for _, c in self._clients.values())]:
            await client.aclose()
        self._clients.clear()
        self._stale.clear()

