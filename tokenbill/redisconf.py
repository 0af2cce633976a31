"""REDIS_URL, read once and the same way for every Redis client in the product.

The forms are redis-py's own (`redis.connection.parse_url`, which django-redis, channels_redis
and routing's redis.asyncio clients use as they are): `redis://`, `rediss://` (TLS) and
`unix://`, with ACL user and password, a db, and redis-py's `ssl_*` query options. The
gateway's own client (billing/resp.py) and the Celery broker get their settings from here
so they connect where and how the others do:

- kombu treats `rediss://` without `broker_use_ssl` as "do not verify the certificate",
  and knows unix sockets only as `redis+socket://`; `celery_broker()` gives it both explicitly.
- Sentinel and Cluster are refused at start-up (settings.py raises ImproperlyConfigured):
  the hot path's Lua scripts and pipelined connection assume one primary.
"""

from __future__ import annotations

import ssl
from urllib.parse import quote

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
UNSUPPORTED = {
    "sentinel": "Redis Sentinel", "redis+sentinel": "Redis Sentinel", "sentinels": "Redis Sentinel",
    "redis+cluster": "Redis Cluster", "rediss+cluster": "Redis Cluster", "cluster": "Redis Cluster",
}


class RedisURLError(ValueError):
    pass


def parse(url: str) -> dict:
    """redis-py's connection keywords for `url` (host, port, db, username, password, path,
    ssl_*), plus `scheme`; RedisURLError naming what is wrong for a form we do not support."""
    from redis.connection import parse_url

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in UNSUPPORTED:
        raise RedisURLError(
            f"REDIS_URL: {UNSUPPORTED[scheme]} ({scheme}://) is not supported: TokenBill needs one Redis primary "
            "(its budget scripts are atomic on one server). Point REDIS_URL at the primary's address "
            "(redis://, rediss:// for TLS, or unix://).")
    if scheme not in SUPPORTED_SCHEMES:
        raise RedisURLError(f"REDIS_URL: unsupported scheme {scheme + '://' if scheme else '(none)'}; "
                            "use redis://, rediss:// (TLS) or unix:// (see README, Redis URL forms)")
    try:
        opts = parse_url(url)
    except ValueError as exc:
        raise RedisURLError(f"REDIS_URL: {exc}") from None
    if opts.pop("cluster", None) not in (None, "false", "0", "no"):
        raise RedisURLError("REDIS_URL: Redis Cluster (cluster=...) is not supported: point REDIS_URL at one primary")
    reqs = opts.get("ssl_cert_reqs")
    if reqs is not None and str(reqs).lower() not in CERT_REQS:
        raise RedisURLError(f"REDIS_URL: ssl_cert_reqs must be one of none, optional, required (got {reqs!r})")
    if scheme == "unix" and not opts.get("path"):
        raise RedisURLError("REDIS_URL: a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock?db=0")
    opts.pop("connection_class", None)
    opts["scheme"] = scheme
    return opts


def ssl_context(opts: dict) -> ssl.SSLContext:
    """The TLS context redis-py's SSLConnection builds from the same options: certificate
    required and host name checked unless the URL says otherwise."""
    context = ssl.create_default_context()
    reqs = CERT_REQS[str(opts.get("ssl_cert_reqs") or "required").lower()]
    context.check_hostname = bool(opts.get("ssl_check_hostname", True)) and reqs != ssl.CERT_NONE
    context.verify_mode = reqs
    if opts.get("ssl_certfile") or opts.get("ssl_keyfile"):
        context.load_cert_chain(certfile=opts.get("ssl_certfile"), keyfile=opts.get("ssl_keyfile"),
                                password=opts.get("ssl_password"))
    if opts.get("ssl_ca_certs") or opts.get("ssl_ca_path"):
        context.load_verify_locations(cafile=opts.get("ssl_ca_certs"), capath=opts.get("ssl_ca_path"))
    if opts.get("ssl_min_version") is not None:
        context.minimum_version = ssl.TLSVersion(opts["ssl_min_version"])
    if opts.get("ssl_ciphers"):
        context.set_ciphers(opts["ssl_ciphers"])
    return context


def celery_broker(url: str, opts: dict) -> tuple[str, dict | None]:
    """(broker URL, broker_use_ssl) for kombu, meaning what `url` means to redis-py."""
    if opts["scheme"] == "unix":
        auth = ""
        if opts.get("password"):
            auth = f"{quote(opts.get('username') or '', safe='')}:{quote(opts['password'], safe='')}@"
        return f"redis+socket://{auth}{opts['path']}?virtual_host={opts.get('db', 0)}", None
    if opts["scheme"] != "rediss":
        return url, None
    base = url.split("?", 1)[0]
    if opts.get("db") and not base.rstrip("/").rsplit("/", 1)[-1].isdigit():
        base = base.rstrip("/") + f"/{opts['db']}"
    use_ssl = {"ssl_cert_reqs": CERT_REQS[str(opts.get("ssl_cert_reqs") or "required").lower()]}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path", "ssl_check_hostname"):
        if opts.get(key) is not None:
            use_ssl[key] = opts[key]
    return base, use_ssl
