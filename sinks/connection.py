"""Redis connections from configuration: ACL user and password, TLS, and no secret in logs.

The URL may carry credentials (``redis://user:pass@host:port/db``); ``SinkConfig`` credentials
(from ``SKEWSCOPE_REDIS_USERNAME`` / ``SKEWSCOPE_REDIS_PASSWORD``) win over them. ``rediss://``
turns TLS on; ``SinkConfig.redis_ssl_ca_certs`` names the CA bundle. Every message this module
writes or raises shows the URL through :func:`redacted_url`, never the password.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sinks.config import SinkConfig

log = logging.getLogger(__name__)


class RedisAuthError(RuntimeError):
    """Redis refused the configured user or password (message is safe to log)."""


class RedisUnavailableError(RuntimeError):
    """Redis did not answer (message is safe to log)."""


class RedisTlsError(RedisUnavailableError):
    """The server's TLS certificate was not trusted (message is safe to log)."""


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connection_kwargs(url: str, config: SinkConfig, timeout_s: float = 2.0) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis`` built from ``url`` and ``config``.

    Raises ValueError for a scheme other than ``redis://`` or ``rediss://`` or a bad db.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ValueError(
            f"Redis URL {redacted_url(url)}: scheme {parts.scheme!r} is not supported; use "
            "redis://[user:pass@]host:port/db or rediss:// for TLS"
        )
    db_text = parts.path.lstrip("/") or "0"
    try:
        db = int(db_text)
    except ValueError as exc:
        raise ValueError(f"Redis URL {redacted_url(url)}: db {db_text!r} is not a number") from exc
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": db,
        "username": config.redis_username or (unquote(parts.username) if parts.username else None),
        "password": config.redis_password or (unquote(parts.password) if parts.password else None),
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        # No silent reconnect-and-retry inside redis-py: the sink retries with its own
        # backoff, and the client must see a lost connection to resync its cache.
        "retry": Retry(NoBackoff(), 0),
    }
    if parts.scheme == "rediss":
        kwargs["ssl"] = True
        if config.redis_ssl_ca_certs:
            kwargs["ssl_ca_certs"] = config.redis_ssl_ca_certs
    return kwargs


def connect(
    url: str, config: SinkConfig, timeout_s: float = 2.0, check: bool = True
) -> redis.Redis:
    """A ``redis.Redis`` for ``url``; with ``check``, PING it and translate failures.

    Raises :class:`RedisAuthError` when the server refuses the credentials and
    :class:`RedisUnavailableError` when it does not answer; both messages name the redacted
    URL and what to check.
    """
    kwargs = connection_kwargs(url, config, timeout_s)
    client = redis.Redis(**kwargs)
    if check:
        ping(client, url)
    return client


def ping(client: redis.Redis, url: str) -> None:
    """PING through ``client``; errors as in :func:`connect`."""
    safe = redacted_url(url)
    user = client.connection_pool.connection_kwargs.get("username") or "default"
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisAuthError(
            f"Redis at {safe} refused user {user!r}: {_safe_reason(exc, client)}; check "
            "SKEWSCOPE_REDIS_USERNAME / SKEWSCOPE_REDIS_PASSWORD (or the URL) and the server's "
            "ACL (ACL GETUSER)"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
            raise RedisAuthError(
                f"Redis at {safe} needs credentials or more permissions for user {user!r}: "
                f"{_safe_reason(exc, client)}; set SKEWSCOPE_REDIS_USERNAME / "
                "SKEWSCOPE_REDIS_PASSWORD"
            ) from None
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise RedisTlsError(
                f"Redis at {safe}: TLS certificate not trusted ({_safe_reason(exc, client)}); "
                "set SKEWSCOPE_REDIS_SSL_CA_CERTS to the CA bundle that signed it"
            ) from None
        raise RedisUnavailableError(
            f"Redis at {safe} does not answer: {_safe_reason(exc, client)}; start it "
            "(skewscope infra up) or fix REDIS_URL"
        ) from None


def _safe_reason(exc: Exception, client: redis.Redis) -> str:
    """The exception text with the configured password masked, in case a driver echoes it."""
    text = str(exc)
    password = client.connection_pool.connection_kwargs.get("password")
    if password:
        text = text.replace(str(password), "***")
    return text
