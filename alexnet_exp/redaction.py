"""Secrets out of everything the sweep writes or prints: passwords in URLs and in URL query strings.

A leaf module. `redact_text` is applied to whole texts (a dumped config, a command line) so that a URL with a
password is caught wherever it stands, not only in the keys we know of.
"""
from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host (any scheme: postgresql+psycopg, mysql, http, ...)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@'\"]*):(?P<secret>[^@\s'\"]+)@")
# ...?password=secret&... and the usual spellings of it
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|secret|api_key|access_key)=)(?P<secret>[^&\s'\"]+)",
                    re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` with every URL password and password-like query value replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_url(url: str) -> str:
    """A storage or tracking URL fit to print or record."""
    return redact_text(url)


def without_credentials(url: str) -> str:
    """`url` with no user name or password, for a link: a masked password would make it a wrong address."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))
