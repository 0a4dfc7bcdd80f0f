"""The AutoGen team: three assistants in a fixed round robin, no tools, no code execution.

Built fresh for every review: AutoGen agents keep their conversation in a model context, so
reusing a team would leak one symbol's review into the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TerminationCondition
from autogen_agentchat.conditions import FunctionalTermination, MaxMessageTermination, TokenUsageTermination
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StopMessage, StructuredMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core.models import ChatCompletionClient

from tradeflow.config import ReviewConfig

from .prompts import DECISION_MAKER, DESCRIPTIONS, FORECASTER, FORECASTER_DESCRIPTION, ROLES, system_prompts
from .schema import DecisionDraft

DecisionMessage = StructuredMessage[DecisionDraft]


class _Recorded(TerminationCondition):
    """Wraps a condition and remembers that it fired: the team resets conditions when a run
    ends, so ``terminated`` alone cannot tell afterwards *why* the run stopped."""

    def __init__(self, inner: TerminationCondition) -> None:
        self._inner = inner
        self.fired = False

    @property
    def terminated(self) -> bool:
        return self._inner.terminated

    async def __call__(self, messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> StopMessage | None:
        stop = await self._inner(messages)
        self.fired = self.fired or stop is not None
        return stop

    async def reset(self) -> None:
        await self._inner.reset()


@dataclass(frozen=True)
class Limits:
    """The caps, kept so the caller can tell *why* a run stopped without a decision."""

    messages: _Recorded
    tokens: _Recorded


def is_decision(message: BaseAgentEvent | BaseChatMessage) -> bool:
    return isinstance(message, StructuredMessage) and message.source == DECISION_MAKER


def _decided(messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> bool:
    return any(is_decision(m) for m in messages)


def build_team(client: ChatCompletionClient, config: ReviewConfig, *,
               forecaster_system_message: str | None = None) -> tuple[RoundRobinGroupChat, Limits]:
    """technical_analyst -> risk_reviewer -> decision_maker (after a ``forecaster`` when given its
    system message, engine=finagent); stops on the structured decision, ``max_messages`` (the task
    counts as one) or ``max_total_tokens``, whichever comes first."""
    prompts = system_prompts(config.atr_multiple_cap)
    first = [] if forecaster_system_message is None else [AssistantAgent(
        name=FORECASTER, model_client=client, system_message=forecaster_system_message,
        description=FORECASTER_DESCRIPTION, reflect_on_tool_use=False)]
    agents = first + [
        AssistantAgent(
            name=role,
            model_client=client,
            system_message=prompts[role],
            description=DESCRIPTIONS[role],
            output_content_type=DecisionDraft if role == DECISION_MAKER else None,
            reflect_on_tool_use=False,
        )
        for role in ROLES
    ]
    limits = Limits(
        messages=_Recorded(MaxMessageTermination(config.max_messages)),
        tokens=_Recorded(TokenUsageTermination(max_total_token=config.max_total_tokens)),
    )
    termination: TerminationCondition = FunctionalTermination(_decided) | limits.messages | limits.tokens
    team = RoundRobinGroupChat(
        agents,
        termination_condition=termination,
        custom_message_types=[DecisionMessage],
    )
    return team, limits
