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
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StructuredMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core.models import ChatCompletionClient

from tradeflow.config import ReviewConfig

from .prompts import DECISION_MAKER, DESCRIPTIONS, ROLES, system_prompts
from .schema import DecisionDraft

DecisionMessage = StructuredMessage[DecisionDraft]


@dataclass(frozen=True)
class Limits:
    """The caps, kept so the caller can tell *why* a run stopped without a decision."""

    messages: MaxMessageTermination
    tokens: TokenUsageTermination


def is_decision(message: BaseAgentEvent | BaseChatMessage) -> bool:
    return isinstance(message, StructuredMessage) and message.source == DECISION_MAKER


def _decided(messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> bool:
    return any(is_decision(m) for m in messages)


def build_team(client: ChatCompletionClient, config: ReviewConfig) -> tuple[RoundRobinGroupChat, Limits]:
    """technical_analyst -> risk_reviewer -> decision_maker; stops on the structured decision,
    ``max_messages`` (the task counts as one) or ``max_total_tokens``, whichever comes first."""
    prompts = system_prompts(config.atr_multiple_cap)
    agents = [
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
        messages=MaxMessageTermination(config.max_messages),
        tokens=TokenUsageTermination(max_total_token=config.max_total_tokens),
    )
    termination: TerminationCondition = FunctionalTermination(_decided) | limits.messages | limits.tokens
    team = RoundRobinGroupChat(
        agents,
        termination_condition=termination,
        custom_message_types=[DecisionMessage],
    )
    return team, limits
