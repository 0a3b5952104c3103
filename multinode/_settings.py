"""Control-plane and SDK settings, loaded explicitly from the environment (never at import time).

Each setting has one environment variable:

=================================  ===============================================  =====================
Variable                           Meaning                                          Default
=================================  ===============================================  =====================
``TEMPORAL_ADDRESS`` & co.         Temporal connection, by Temporal's own           ``localhost:7233``
                                   conventions (``TEMPORAL_NAMESPACE``,             namespace ``default``
                                   ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``,
                                   ``TEMPORAL_PROFILE``, ``temporal.toml``)
``MULTINODE_TASK_QUEUE``           Task queue of the control-plane workers          ``multinode``
``MULTINODE_HOME``                 Local state: versions, environments, logs,       ``~/.multinode``
                                   the dev server's database
``MULTINODE_PROVISIONER``          Container backend of ``mn worker``               ``local``
``MULTINODE_GRACE_PERIOD_SECONDS`` Time user code gets after an interruption        ``120``
``MULTINODE_WORKER_WAIT_SECONDS``  How long the SDK waits for a control-plane        ``5``
                                   worker to answer before failing
``MULTINODE_LOCAL_POOL_SIZE``      Containers the local provisioner keeps started   ``2``
                                   ahead of time, per environment (each serves one
                                   execution only; 0: fork each on demand)
``MULTINODE_CONTAINER_TEMPORAL_``  Name of a ``temporal.toml`` profile the           the control plane's
``PROFILE``                        containers' agents connect with instead of the    own connection
                                   control plane's (a credential of their own; same
                                   namespace)
``MULTINODE_ENCRYPTION_KEYS``      Payload encryption keys, ``ID:BASE64,...``, the   none: payloads in
                                   first encrypts (``multinode/_codec.py``); every   plain JSON
                                   client, worker and container needs the same list
``MULTINODE_ENCRYPTION_ACCEPT_``   ``1``: with keys, still read payloads that are    ``0``: refused
``PLAIN``                          not encrypted (while turning encryption on)
``MULTINODE_PROJECT``              Project of decorated functions called from        none
                                   outside an invocation (and of ``mn`` commands)
=================================  ===============================================  =====================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from temporalio.envconfig import ClientConfigProfile

from multinode._codec import ENV_ACCEPT_PLAIN, ENV_ENCRYPTION_KEYS, EncryptionCodec, parse_keys
from multinode._limits import check_task_queue
from multinode.errors import ConfigurationError

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"
"""Where the SDK looks for Temporal when nothing is configured: the ``mn dev`` server."""
DEFAULT_TASK_QUEUE = "multinode"
"""Task queue shared by every control-plane worker."""
DEFAULT_GRACE_PERIOD_SECONDS = 120.0
"""Time user code gets to finish after a cancellation or timeout before it is killed."""
DEFAULT_WORKER_WAIT_SECONDS = 5.0
"""How long an SDK call that needs a control-plane worker waits for one before failing."""
DEFAULT_PROVISIONER = "local"
"""Container backend used when ``MULTINODE_PROVISIONER`` is unset."""
DEFAULT_LOCAL_POOL_SIZE = 2
"""Containers the local provisioner keeps started ahead of time per environment: already connected and
polling their own task queue, each waiting to be assigned one execution (then replaced). Two cover a
burst of two starts, and a start while the replacement of the previous one is still connecting."""
DEFAULT_CAPACITY_WAIT_SECONDS = 1800.0
"""How long provisioning keeps retrying when the cloud has no capacity for a container (Fargate's
"Capacity is unavailable", an account's vCPU quota, throttling) before the attempt fails. The
invocation is PENDING meanwhile, and the wait does not use up ``max_retries``."""
MAX_CAPACITY_WAIT_SECONDS = 20 * 3600.0
"""Upper bound of ``MULTINODE_CAPACITY_WAIT_SECONDS`` (a provisioning activity may run for 24 hours)."""

_TEMPORAL_PROFILE_ENV = "MULTINODE_TEMPORAL_PROFILE_JSON"
ENV_TEMPORAL_PROFILE = _TEMPORAL_PROFILE_ENV
"""The Temporal profile (``temporal.toml`` form, as JSON) a container receives."""
ENV_CONTAINER_PROFILE = "MULTINODE_CONTAINER_TEMPORAL_PROFILE"


def default_home() -> Path:
    return Path.home() / ".multinode"


class MultinodeSettings(BaseModel):
    """Everything the SDK, the CLI and the control-plane worker need to know about their setting."""

    model_config = ConfigDict(frozen=True)

    temporal_profile: dict[str, Any] = Field(default_factory=dict)
    """Temporal client profile in ``temporal.toml`` form (address, namespace, api_key, tls)."""
    task_queue: str = DEFAULT_TASK_QUEUE
    home: Path = Field(default_factory=default_home)
    provisioner: str = DEFAULT_PROVISIONER
    grace_period_seconds: float = DEFAULT_GRACE_PERIOD_SECONDS
    worker_wait_seconds: float = DEFAULT_WORKER_WAIT_SECONDS
    local_pool_size: int = DEFAULT_LOCAL_POOL_SIZE
    capacity_wait_seconds: float = DEFAULT_CAPACITY_WAIT_SECONDS
    """``MULTINODE_CAPACITY_WAIT_SECONDS``: see :data:`DEFAULT_CAPACITY_WAIT_SECONDS`."""
    container_temporal_profile: dict[str, Any] = Field(default_factory=dict)
    """Temporal profile forwarded to containers; empty: ``temporal_profile`` itself."""
    encryption_keys: SecretStr = SecretStr("")
    """``MULTINODE_ENCRYPTION_KEYS`` as given (checked when loaded); empty: payloads are not encrypted."""
    encryption_accept_plain: bool = False
    project: str | None = None
    """``MULTINODE_PROJECT``: the project a decorated function is invoked in, outside an invocation."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MultinodeSettings:
        env = os.environ if environ is None else environ
        profile_json = env.get(_TEMPORAL_PROFILE_ENV)
        if profile_json:
            profile = json.loads(profile_json)
        else:
            try:
                profile = dict(ClientConfigProfile.load(override_env_vars=dict(env)).to_dict())
            except Exception as exc:  # envconfig raises plain errors for a bad temporal.toml
                raise ConfigurationError(f"Could not load the Temporal client configuration: {exc}") from exc
            _absolute_tls_paths(profile)
        return cls(
            temporal_profile=profile,
            task_queue=check_task_queue(env.get("MULTINODE_TASK_QUEUE") or DEFAULT_TASK_QUEUE),
            home=Path(env["MULTINODE_HOME"]).expanduser() if env.get("MULTINODE_HOME") else default_home(),
            provisioner=env.get("MULTINODE_PROVISIONER") or DEFAULT_PROVISIONER,
            grace_period_seconds=_float(env, "MULTINODE_GRACE_PERIOD_SECONDS", DEFAULT_GRACE_PERIOD_SECONDS),
            worker_wait_seconds=_float(env, "MULTINODE_WORKER_WAIT_SECONDS", DEFAULT_WORKER_WAIT_SECONDS),
            local_pool_size=_count(env, "MULTINODE_LOCAL_POOL_SIZE", DEFAULT_LOCAL_POOL_SIZE),
            capacity_wait_seconds=_capacity_wait(env),
            container_temporal_profile=_container_profile(env, profile),
            encryption_keys=_encryption_keys(env),
            encryption_accept_plain=_flag(env, ENV_ACCEPT_PLAIN),
            project=(env.get("MULTINODE_PROJECT") or "").strip() or None,
        )

    def payload_codec(self) -> EncryptionCodec:
        """The codec every Temporal client of this setting uses (without keys, it only refuses to read
        encrypted payloads)."""
        keys = parse_keys(self.encryption_keys.get_secret_value())
        return EncryptionCodec(keys, accept_plain=self.encryption_accept_plain)

    @property
    def temporal_address(self) -> str:
        return str(self.temporal_profile.get("address") or DEFAULT_TEMPORAL_ADDRESS)

    @property
    def temporal_namespace(self) -> str:
        return str(self.temporal_profile.get("namespace") or "default")

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``temporalio.client.Client.connect``."""
        profile = ClientConfigProfile.from_dict(self.temporal_profile)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = dict(profile.to_client_connect_config())
        kwargs["target_host"] = self.temporal_address
        kwargs["namespace"] = self.temporal_namespace
        return kwargs

    def to_env(self) -> dict[str, str]:
        """Environment that reproduces these settings in another process (a container)."""
        profile = self.container_temporal_profile or self.temporal_profile
        return {
            _TEMPORAL_PROFILE_ENV: json.dumps(
                {
                    **profile,
                    "address": profile.get("address") or DEFAULT_TEMPORAL_ADDRESS,
                    "namespace": self.temporal_namespace,
                }
            ),
            "MULTINODE_TASK_QUEUE": self.task_queue,
            "MULTINODE_HOME": str(self.home),
            "MULTINODE_PROVISIONER": self.provisioner,
            "MULTINODE_GRACE_PERIOD_SECONDS": str(self.grace_period_seconds),
            "MULTINODE_WORKER_WAIT_SECONDS": str(self.worker_wait_seconds),
            "MULTINODE_LOCAL_POOL_SIZE": str(self.local_pool_size),
            "MULTINODE_CAPACITY_WAIT_SECONDS": str(self.capacity_wait_seconds),
            ENV_ENCRYPTION_KEYS: self.encryption_keys.get_secret_value(),
            ENV_ACCEPT_PLAIN: "1" if self.encryption_accept_plain else "",
        }

    def with_overrides(self, **changes: Any) -> MultinodeSettings:
        return self.model_copy(update={k: v for k, v in changes.items() if v is not None})


def _capacity_wait(env: Mapping[str, str]) -> float:
    seconds = _float(env, "MULTINODE_CAPACITY_WAIT_SECONDS", DEFAULT_CAPACITY_WAIT_SECONDS)
    if seconds > MAX_CAPACITY_WAIT_SECONDS:
        raise ConfigurationError(
            f"MULTINODE_CAPACITY_WAIT_SECONDS={seconds:g} is over the limit of {MAX_CAPACITY_WAIT_SECONDS:g} "
            "(20 hours): set a shorter wait.",
            parameter="MULTINODE_CAPACITY_WAIT_SECONDS",
        )
    return seconds


def _container_profile(env: Mapping[str, str], own: dict[str, Any]) -> dict[str, Any]:
    name = env.get(ENV_CONTAINER_PROFILE)
    if not name:
        return {}
    try:
        profile = dict(ClientConfigProfile.load(profile=name, disable_env=True, override_env_vars=dict(env)).to_dict())
    except Exception as exc:  # envconfig raises plain errors for a missing profile or a bad file
        raise ConfigurationError(
            f"{ENV_CONTAINER_PROFILE}={name!r}: could not load that profile of the Temporal configuration file "
            f"({exc}). Name a profile of the file TEMPORAL_CONFIG_FILE points at (or the default one).",
            parameter=ENV_CONTAINER_PROFILE,
        ) from exc
    _absolute_tls_paths(profile)
    own_namespace = own.get("namespace") or "default"
    if (profile.get("namespace") or own_namespace) != own_namespace:
        raise ConfigurationError(
            f"{ENV_CONTAINER_PROFILE}={name!r} names namespace {profile.get('namespace')!r}, but containers must "
            f"use the control plane's namespace {own_namespace!r} (their activities run in their invocation's "
            "namespace): give the profile a credential of its own, not another namespace.",
            parameter=ENV_CONTAINER_PROFILE,
        )
    return profile


def _encryption_keys(env: Mapping[str, str]) -> SecretStr:
    raw = env.get(ENV_ENCRYPTION_KEYS) or ""
    parse_keys(raw)  # checked now: a bad key fails at start, not at the first payload
    return SecretStr(raw)


def _absolute_tls_paths(profile: dict[str, Any]) -> None:
    """Certificate paths relative to this process's directory, made absolute: containers start in
    their own folder and receive the profile as it is."""
    tls = profile.get("tls")
    if not isinstance(tls, dict):
        return
    for key in ("server_ca_cert", "client_cert", "client_key"):
        source = tls.get(key)
        if isinstance(source, dict) and isinstance(source.get("path"), str) and source["path"]:
            source["path"] = os.path.abspath(source["path"])


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigurationError(f"{name}={env.get(name)!r}: use 1 or 0.", parameter=name)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds.", parameter=name) from exc
    if value <= 0:
        raise ConfigurationError(f"{name}={raw!r} must be more than 0.", parameter=name)
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number.", parameter=name) from exc
    if value < 0:
        raise ConfigurationError(f"{name}={raw!r} must be 0 or more.", parameter=name)
    return value
