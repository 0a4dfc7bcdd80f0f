"""Keep credentials out of transcripts, errors and logs.

Two layers, because either alone leaks: the exact values of secret-looking environment
variables (whatever their shape), and common key shapes (``sk-...``, ``Bearer ...``) for keys
that reached us some other way, e.g. echoed back in a provider's error body.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

MASK = "***"
#: Environment variable names whose values are secrets.
SECRET_NAME_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
#: Known secret variables of the providers, redacted even if the name pattern changes.
PROVIDER_SECRET_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LLM_API_KEY")
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would mangle ordinary text
_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{16,})"  # OpenAI-style keys
    r"|((?<=Bearer )[A-Za-z0-9._~+/\-]{8,}=*)"  # bearer tokens
    r"|((?<=api-key: )\S{8,})",  # Azure header echoed in errors
)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of every secret-looking variable, longest first (so overlaps mask fully)."""
    environ = os.environ if environ is None else environ
    names = {name for name in environ if SECRET_NAME_RE.search(name)} | set(PROVIDER_SECRET_VARS)
    values = {environ[name].strip() for name in names if environ.get(name)}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


class Redactor:
    """Replaces configured secret values and key-shaped strings with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        return cls(secret_values(environ))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _SHAPES.sub(MASK, text)
