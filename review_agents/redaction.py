"""Keep credentials out of transcripts, errors and logs: the review's view of the one redaction
boundary, ``tradeflow.redaction`` (configured secret values, key shapes, URL userinfo).

Two layers, because either alone leaks: the exact values of secret-looking environment
variables (whatever their shape), and common key shapes (``sk-...``, ``Bearer ...``) for keys
that reached us some other way, e.g. echoed back in a provider's error body.
"""

from __future__ import annotations

from tradeflow.redaction import MASK, PROVIDER_SECRET_VARS, SECRET_NAME_RE, Redactor, redact_tree, secret_values

__all__ = ["MASK", "PROVIDER_SECRET_VARS", "SECRET_NAME_RE", "Redactor", "redact_tree", "secret_values"]
