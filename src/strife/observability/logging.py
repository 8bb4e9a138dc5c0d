"""structlog set-up: JSON lines by default, and secrets never reach a log.

Redaction is a processor in the chain, so it holds for every log call in the
process, including ones written carelessly later.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[_-]?key|private[_-]?key|cookie",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
# 13-19 digits, optionally grouped by spaces or dashes: a card-like number.
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "*" * (len(digits) - 4) + digits[-4:]


_SAFE_TYPES = (int, float, bool, type(None))
_secret_keys: dict[str, bool] = {}


def _is_secret_key(key: str) -> bool:
    """Cached: a process logs the same few dozen field names over and over."""
    known = _secret_keys.get(key)
    if known is None:
        known = bool(_SECRET_KEY.search(key))
        if len(_secret_keys) < 4096:
            _secret_keys[key] = known
    return known


def _scrub_text(text: str) -> str:
    if "bearer" in text.lower():
        text = _BEARER.sub("Bearer " + REDACTED, text)
    return _CARD.sub(_mask_card, text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, _SAFE_TYPES):
        return value
    if depth > 8:
        return REDACTED
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, bytes):
        return _scrub(value.decode("utf-8", "replace"), depth + 1)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if _is_secret_key(str(k)) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, depth + 1) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace secret-named fields and bearer tokens; mask card-like numbers."""
    for key, value in event_dict.items():
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif not isinstance(value, _SAFE_TYPES):
            event_dict[key] = _scrub(value)
    return event_dict


@dataclass(frozen=True)
class _Config:
    fmt: LogFormat
    level: int
    stream: TextIO


_config: _Config | None = None
_generation = 0
_LEVELS = logging.getLevelNamesMapping()


def configure_logging(
    fmt: LogFormat = "json", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for this process; safe to call again (tests do)."""
    global _config, _generation
    out = stream or sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _config = _Config(fmt, _LEVELS[level.upper()], out)
    _generation += 1


class _Stderr:
    """structlog's output for an unconfigured process: stderr as it is at each
    write (test runners and applications swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _library_default(name: str) -> Any:
    """Where Strife is used as a library and nobody configured logging:
    warnings and errors to stderr, the rest dropped, as Python's logging
    does without handlers. structlog's own default would print every info
    line to stdout, into the application's output."""
    return structlog.wrap_logger(
        _Stderr(),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        component=name,
    )


class _Logger:
    """A logger bound once per configuration, not once per call.

    structlog's lazy proxy binds a new logger on every call, even for a
    level that is filtered out; this one rebinds only after
    `configure_logging` (or the application's own `structlog.configure`)
    runs again.
    """

    __slots__ = ("_bound", "_generation", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._generation: tuple[int, bool] = (-1, False)
        self._bound: Any = None

    def __getattr__(self, method: str) -> Any:
        generation = (_generation, structlog.is_configured())
        if self._generation != generation:
            if _config is None and not generation[1]:
                self._bound = _library_default(self._name)
            else:
                self._bound = structlog.wrap_logger(
                    None, logger_factory_args=(self._name,), component=self._name
                ).bind()
            self._generation = generation
        return getattr(self._bound, method)


def get_logger(name: str) -> Any:
    """A logger that follows whatever configuration `configure_logging` set last."""
    return _Logger(name)


def log_line(
    component: str, level: str, event: str, trusted: dict[str, Any], untrusted: dict[str, Any]
) -> None:
    """One JSON line straight to the stream, for lines written on every RPC.

    Same fields and redaction as the processor chain at a fraction of the
    cost: `trusted` values come from Strife itself (method names, verified
    peer ids, status codes) and skip the scrubbing, `untrusted` ones
    (anything a caller sent or a handler noted) get it. Any format but JSON
    goes through structlog as usual.
    """
    config = _config
    if config is None or config.fmt != "json":
        getattr(get_logger(component), level)(event, **trusted, **untrusted)
        return
    if _LEVELS[level.upper()] < config.level:
        return
    line = {"component": component, **trusted}
    for key, value in untrusted.items():
        if _is_secret_key(key):
            line[key] = REDACTED
        else:
            line[key] = value if isinstance(value, _SAFE_TYPES) else _scrub(value)
    line["event"] = event
    line["level"] = level
    line["ts"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    config.stream.write(json.dumps(line, default=repr) + "\n")
    config.stream.flush()
