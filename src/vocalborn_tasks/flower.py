"""Flower against our app, never without authentication (``pip install 'vocalborn-tasks[flower]'``).

Flower's API can send tasks and shut workers down, and it has no authentication by default.
``vocalborn-tasks flower`` therefore refuses to start unless ``FLOWER_BASIC_AUTH`` holds
``user:password`` pairs (comma separated, passwords of at least 8 characters); no default
password exists anywhere. It binds 127.0.0.1:5555 unless ``FLOWER_ADDRESS``/``FLOWER_PORT``
(or the command's options) say otherwise; put a TLS proxy in front for remote access.

The credentials reach Flower through its own ``FLOWER_BASIC_AUTH`` environment variable, never
the command line (which any local user can read in ``ps``). Note that Flower's ``/healthcheck``
and ``/metrics`` endpoints answer without authentication by design.

Flower talks to the broker through the app :func:`~vocalborn_tasks.worker.factory.create_celery_app`
builds, so it follows the same settings as the workers, ``REDIS_SENTINELS`` included (nothing
here builds a URL). Its Broker page is not available: Flower recognises kombu's transport names
only, and the app names its own transport.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Sequence

from .config import TaskSettings
from .errors import ConfigurationError

__all__ = ["MIN_PASSWORD_LENGTH", "check_basic_auth", "flower_argv", "run_flower"]

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8


def check_basic_auth(settings: TaskSettings) -> str:
    """The validated ``user:password[,user:password...]`` string.

    Raises:
        ConfigurationError: unset, malformed, or a password shorter than 8 characters.
    """
    if settings.flower_basic_auth is None or not settings.flower_basic_auth.get_secret_value():
        raise ConfigurationError(
            "Flower needs authentication: set FLOWER_BASIC_AUTH=user:password (it has no "
            "default password and will not run without one)"
        )
    value = settings.flower_basic_auth.get_secret_value()
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user.strip():
            raise ConfigurationError("FLOWER_BASIC_AUTH must look like user:password[,user2:pw2]")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ConfigurationError(
                f"FLOWER_BASIC_AUTH: the password of {user.strip()!r} is shorter than "
                f"{MIN_PASSWORD_LENGTH} characters"
            )
    return value


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_argv(
    settings: TaskSettings,
    *,
    address: str | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``celery flower`` arguments (no credentials: those travel in the environment)."""
    return [
        "flower",
        f"--address={address or settings.flower_address}",
        f"--port={port or settings.flower_port}",
        *extra,
    ]


def run_flower(
    settings: TaskSettings,
    *,
    address: str | None = None,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> None:
    """Run Flower in this process until it is stopped (blocks).

    Raises:
        ConfigurationError: no usable ``FLOWER_BASIC_AUTH``, or Flower is not installed.
    """
    auth = check_basic_auth(settings)
    try:
        import flower  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "Flower is not installed: pip install 'vocalborn-tasks[flower]'"
        ) from exc
    bind = address or settings.flower_address
    if not _is_loopback(bind):
        logger.warning(
            "Flower listens on %s, not loopback: serve it only behind TLS and a firewall", bind
        )
    os.environ["FLOWER_BASIC_AUTH"] = auth
    from .worker.factory import create_celery_app

    app = create_celery_app(settings)
    app.start(flower_argv(settings, address=bind, port=port, extra=extra))
