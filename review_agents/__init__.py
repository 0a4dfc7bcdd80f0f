"""The AutoGen review team: evidence in, an auditable BUY/SELL/HOLD decision out.

Public API (everything else is internal)::

    review(evidence, config, *, client=None, environ=None) -> ReviewOutcome   # sync
    areview(...)                                                               # async
    make_client(config, environ=None) / describe_client(config, environ=None)
    signal_payload(outcome, evidence) / validate_signal_data(data)

See docs/review_agents.md for the agent graph, guardrails and fallback reasons.
"""

from .clients import ReviewConfigError, describe_client, make_client
from .evidence_view import EvidenceError
from .failures import FALLBACK_REASONS
from tradeflow.redaction import Redactor
from .review import areview, review
from .rules import RULES_MODEL_NAME, RuleBasedChatCompletionClient
from .schema import DecisionDraft, ReviewOutcome, TradeDecision
from .signal_payload import SignalError, confidence_band, signal_payload, validate_signal_data

__all__ = [
    "FALLBACK_REASONS",
    "RULES_MODEL_NAME",
    "DecisionDraft",
    "EvidenceError",
    "Redactor",
    "ReviewConfigError",
    "ReviewOutcome",
    "RuleBasedChatCompletionClient",
    "SignalError",
    "TradeDecision",
    "areview",
    "confidence_band",
    "describe_client",
    "make_client",
    "review",
    "signal_payload",
    "validate_signal_data",
]
