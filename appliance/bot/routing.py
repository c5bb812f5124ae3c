"""Which flow answers a call: the [bot] settings turned into call apps, flows loaded (and checked) once."""

from __future__ import annotations

from pathlib import Path

from appliance.bot.callbot import flow_app_factory
from appliance.bot.flow import EXAMPLE_FLOW, Flow, load_flow
from appliance.bot.records import CallStore
from appliance.bot.routed import RoutedLlm
from appliance.calls import CallAppFactory, CallInfo, NotReady
from appliance.config.paths import data_root
from appliance.config.settings import BotSettings
from appliance.runtime.routes import Routes
from appliance.voice.readiness import ModelsNotReady, VoiceModels


def records_root(settings: BotSettings) -> Path:
    if settings.records_dir is not None:
        return settings.records_dir
    return data_root() / "calls"


class FlowRouter:
    """Routes a dialled number to its flow (``bot.routes``), else to ``bot.flow`` or the example flow. Raises
    FlowError at construction for a bad flow file, so a broken configuration stops start-up with the reason."""

    def __init__(self, settings: BotSettings, routes: Routes, models: VoiceModels) -> None:
        self.settings, self.models = settings, models
        self.default = load_flow(settings.flow or EXAMPLE_FLOW, settings.variables)
        self.flows: dict[str, Flow] = {n: load_flow(p, settings.variables) for n, p in settings.routes.items()}
        self.store = CallStore(records_root(settings), settings.retention_days, settings.max_records)
        # the device's upstream routes (live: a reload re-applies them); none for a task: its local path only
        self.llm = RoutedLlm(routes, "chat") if routes.has("chat") else None
        self.summarizer = RoutedLlm(routes, "summary") if routes.has("summary") else None

    def flow_for(self, called: str) -> Flow:
        return self.flows.get(called, self.default)

    def __call__(self, info: CallInfo) -> CallAppFactory | None:
        try:
            stack = self.models.require()
        except ModelsNotReady as exc:
            raise NotReady(str(exc)) from None
        return flow_app_factory(stack, self.flow_for(info.called), self.store, self.llm, self.summarizer,
                                self.settings.record_audio)

    async def aclose(self) -> None:
        for client in (self.llm, self.summarizer):
            if client is not None:
                await client.aclose()
