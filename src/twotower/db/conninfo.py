"""Connection strings: what messages may show of them (never a piece of the password), and their URL form."""

from __future__ import annotations

import contextlib
import logging
import re
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from twotower.errors import ConfigError

__all__ = ["as_url", "first_line", "hide", "invalid_url", "parse_url", "redact", "scrub"]


def redact(conninfo: str) -> str:
    """``user@host:port/dbname`` for messages: never the password, nor a host that holds a piece of it (a password
    with an unencoded ``@`` or ``/`` is parsed into the host)."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = str(parts.get("host") or "localhost")
    if _secrets(conninfo) & _pieces(host) or any(c in host for c in "@ "):
        host = "<malformed host>"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return scrub(f"{user}{host}{port}/{parts.get('dbname', '')}", conninfo)


_URL_SECRET = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:(?P<secret>[^?#]*)@")
_KEYWORD_SECRET = re.compile(r"password\s*=\s*(?P<secret>'(?:[^'\\]|\\.)*'|.*)", re.IGNORECASE)


def _pieces(text: str) -> set[str]:
    """The text and its parts between separators (``@ / : % =`` and white space), those of 4 characters or more."""
    return {text} | {p for p in re.split(r"[@/:%=\s'\[\]]+", text) if len(p) >= 4}


def _secrets(conninfo: str) -> set[str]:
    """What may be (a piece of) the password in a connection string, parsed or not: the parsed password, the URL's
    user-info after the first ``:`` up to the last ``@`` before the path, a ``password=`` value to the end."""
    found: set[str] = set()
    with contextlib.suppress(psycopg.ProgrammingError):
        password = conninfo_to_dict(conninfo).get("password")
        if password:
            found |= _pieces(str(password))
    authority = conninfo.split("/", 3)[2] if "://" in conninfo and conninfo.count("/") >= 2 else ""
    if "@" in authority and ":" in authority.rsplit("@", 1)[0]:
        found |= _pieces(authority.rsplit("@", 1)[0].split(":", 1)[1])
    if (match := _URL_SECRET.match(conninfo)) is not None:
        found |= _pieces(match["secret"].rsplit("@", 1)[0])
    if (match := _KEYWORD_SECRET.search(conninfo)) is not None:
        found |= _pieces(match["secret"].strip("'"))
    return {f for f in found if f}


def scrub(message: str, conninfo: str) -> str:
    """``message`` with everything that may be a piece of the connection string's password replaced by ``***``."""
    for secret in sorted(_secrets(conninfo), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


class _ScrubSecrets(logging.Filter):
    """Hides the password's pieces in what psycopg and its pool log (a connection error can quote a host that libpq
    parsed out of a malformed password), before any handler formats the record."""

    def __init__(self) -> None:
        super().__init__()
        self.conninfos: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = message
        for conninfo in list(self.conninfos):
            clean = scrub(clean, conninfo)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_SCRUB = _ScrubSecrets()
for _name in ("psycopg", "psycopg.pool"):
    logging.getLogger(_name).addFilter(_SCRUB)


def hide(conninfo: str) -> None:
    """Hide this connection string's password from psycopg's log lines from now on."""
    _SCRUB.conninfos.add(conninfo)


def parse_url(conninfo: str) -> str:
    """The URL itself when libpq can parse it into something that can be a server; else a ``ConfigError`` that
    shows no piece of the password. A host with an ``@`` is a password's unencoded ``@`` that libpq took for the
    start of the host: connecting would only quote that piece of the password in every error."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise invalid_url(conninfo, exc) from None
    if any("@" in host for host in str(parts.get("host") or "").split(",")):
        raise ConfigError("invalid database URL: its host has an '@' (characters such as @ / : % in the password "
                          f"must be percent-encoded, @ as %40): {redact(conninfo)}")  # fmt: skip
    return conninfo


def as_url(conninfo: str) -> str:
    """A connection string as the ``postgresql://`` URL that other clients take (SUPABASE_DB_URL for the edge
    functions): user, password, host or Unix-socket directory (``?host=``), port and database."""
    info = conninfo_to_dict(conninfo)
    user = quote(str(info.get("user", "postgres")), safe="")
    if info.get("password"):
        user += ":" + quote(str(info["password"]), safe="")
    name, host, port = quote(str(info["dbname"]), safe=""), str(info.get("host", "127.0.0.1")), info.get("port")
    if host.startswith("/"):
        return f"postgresql://{user}@/{name}?host={quote(host)}" + (f"&port={port}" if port else "")
    return f"postgresql://{user}@{host}:{port or 5432}/{name}"


def invalid_url(conninfo: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"invalid database URL: {scrub(first_line(exc), conninfo)} (characters such as @ / : % in "
                       "the password must be percent-encoded)")  # fmt: skip


def first_line(exc: BaseException) -> str:
    """libpq's multi-line message as one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
