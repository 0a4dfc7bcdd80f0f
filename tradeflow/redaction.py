"""The one redaction boundary: credentials out of URLs, secrets out of text, model text made inert.

Everything tradeflow records (params, tags, descriptions, artifacts, traces, WebUI payloads, log
lines, error messages) may carry a URL someone configured (with a ``user:password`` before its host) or text a
model produced (which can echo a key, or be markdown/HTML that forges a run page). This module is
the lowest layer, so every other layer can call it:

- ``strip_credentials(url)``: a URL without its ``user:password@`` (and without secret-named query
  values), for links and tags;
- ``Redactor``: masks the *values* of configured secrets (every secret-named environment variable
  and every password embedded in a URL-valued one), secret-*shaped* strings (``sk-...``,
  ``ghp_...``, ``Bearer ...``) and URL userinfo anywhere in free text; ``redact_tree`` applies it
  to a JSON-like value;
- ``plain_line`` / ``markdown_literal``: model text as data: one line, size-capped, and escaped
  for a markdown/HTML surface (no headings, links, images or tags it could forge).
"""

from __future__ import annotations

import html
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
#: Environment variable names whose values are secrets.
SECRET_NAME_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
#: Known secret variables of the providers, redacted even if the name pattern changes.
PROVIDER_SECRET_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LLM_API_KEY", "BACKEND_API_TOKEN")
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would mangle ordinary text
_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{16,})"  # OpenAI-style keys
    r"|(gh[pousr]_[A-Za-z0-9]{20,})|(github_pat_[A-Za-z0-9_]{20,})"  # GitHub tokens
    r"|(xox[abprs]-[A-Za-z0-9\-]{10,})"  # Slack tokens
    r"|(AKIA[0-9A-Z]{16})"  # AWS access key ids
    r"|((?<=Bearer )[A-Za-z0-9._~+/\-]{8,}=*)"  # bearer tokens
    r"|((?<=api-key: )\S{8,})",  # Azure header echoed in errors
)
#: ``scheme://userinfo@`` anywhere in text (the userinfo is what leaks).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@?#'\"<>]+)@")
_SECRET_QUERY = re.compile(r"(token|key|secret|password|passwd|signature|sig|auth|credential)", re.IGNORECASE)


def strip_credentials(url: str) -> str:
    """``url`` without embedded ``user:password@`` and with secret-named query values masked.

    The same rule as MLflow's own git-URL helper (``mlflow.utils.git_utils``) for the userinfo;
    a URL with no scheme (``git@github.com:org/repo.git``, a path) only loses a ``user:pw@``
    prefix. Never raises: a value that is not a URL comes back with its userinfo masked."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return _URL_USERINFO.sub(lambda m: m["scheme"], text)
    if not parts.scheme or not parts.netloc:
        head, sep, rest = text.partition("@")
        if sep and ":" in head and "/" not in head:  # user:pw@host:path (scp-like with a password)
            return rest
        return text
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query and _SECRET_QUERY.search(query):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{quote(k)}={MASK if _SECRET_QUERY.search(k) else quote(v)}" for k, v in pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _url_passwords(value: str) -> list[str]:
    found = []
    for match in _URL_USERINFO.finditer(value):
        user, _, password = match["userinfo"].partition(":")
        found += [s for s in (password, match["userinfo"]) if s]
    return found


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of every secret-looking variable and every password inside a URL-valued variable,
    longest first (so overlaps mask fully)."""
    environ = os.environ if environ is None else environ
    names = {name for name in environ if SECRET_NAME_RE.search(name)} | set(PROVIDER_SECRET_VARS)
    values = {environ[name].strip() for name in names if environ.get(name)}
    for value in environ.values():
        if "@" in value and "://" in value:
            values.update(_url_passwords(value))
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


class Redactor:
    """Replaces configured secret values, key-shaped strings and URL userinfo with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        return cls(secret_values(environ))

    def __call__(self, text: str) -> str:
        text = str(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
        return _SHAPES.sub(MASK, text)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with the secrets configured in ``environ`` (default: this process) masked."""
    return Redactor.from_env(environ)(text)


def redact_tree(value: Any, redactor: Redactor | None = None) -> Any:
    """A JSON-like value with every string (keys included) passed through ``redactor``."""
    redactor = redactor or Redactor.from_env()
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, Mapping):
        return {redactor(k) if isinstance(k, str) else k: redact_tree(v, redactor) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v, redactor) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in each record's final message (installed on the
    entry points' handlers by ``tradeflow.cli.setup_logging``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


# --- model text as data ---------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
#: Markdown punctuation that could start markup (headings, emphasis, links, images, tables, code).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>/:])")


def plain_line(text: object, max_chars: int = 500) -> str:
    """``text`` on one line (newlines and control characters become spaces), at most ``max_chars``
    (a cut is marked with ``…``)."""
    line = " ".join(_CONTROL.sub(" ", str(text)).split())
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def inert_text(text: object, max_chars: int = 2000, redactor: Redactor | None = None) -> str:
    """Model text as it is *stored* (decision.json, signal data, the WebUI, the trace): secrets
    masked, one line, capped, markdown images and links reduced to their label, ``<`` made ``‹``
    (no tag can form) and ``scheme://`` defanged to ``scheme[:]//`` (no link)."""
    line = (redactor or Redactor.from_env())(plain_line(text, max_chars))
    line = _MD_IMAGE.sub(lambda m: f"(image removed: {m[1]})", line)
    line = _MD_LINK.sub(lambda m: m[1], line)
    line = line.replace("<", "\u2039")  # no tag can open; a lone ">" (177 > 170) stays as written
    return re.sub(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://", r"\1[:]//", line)


def markdown_literal(text: object, max_chars: int = 500) -> str:
    """Model text for a markdown surface that also renders HTML (the MLflow description, a WebUI
    page): one line, HTML-escaped and every markdown punctuation backslash-escaped, so it shows
    as the characters it is: no heading, link, image, table or tag can be forged from it."""
    return _MARKDOWN.sub(r"\\\1", html.escape(plain_line(text, max_chars), quote=True))


def ascii_name(value: str, what: str) -> str:
    """A name (symbol, experiment, DAG id) NFKC-normalised and refused unless it is ASCII with no
    surrounding whitespace: ``ſpy`` or ``AAPL\\n`` never becomes a look-alike of another name."""
    if value != value.strip():
        raise ValueError(f"{what} {value!r} has leading or trailing whitespace")
    normal = unicodedata.normalize("NFKC", value)
    if normal != value or not normal.isascii():
        raise ValueError(f"{what} {value!r} is not plain ASCII (look-alike characters are refused)")
    return normal


__all__ = ["MASK", "PROVIDER_SECRET_VARS", "SECRET_NAME_RE", "RedactingFilter", "Redactor", "ascii_name", "inert_text", "markdown_literal", "plain_line",
           "redact", "redact_tree", "secret_values", "strip_credentials"]
