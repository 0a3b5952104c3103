"""Keeping the Temporal credentials out of reach of user code (see "Trust model" in docs/architecture.md)."""

from __future__ import annotations

import ctypes
import json
import sys
from collections.abc import Mapping

from multinode._codec import ENV_ENCRYPTION_KEYS
from multinode._settings import DEFAULT_TEMPORAL_ADDRESS, ENV_TEMPORAL_PROFILE, MultinodeSettings
from multinode.errors import ConfigurationError

ENV_CREDENTIALS_FD = "MULTINODE_CREDENTIALS_FD"
"""A local container's agent reads its secrets (``SECRET_ENV``, as a JSON object) from this descriptor."""
ENV_CONTAINER_SECRETS = "MULTINODE_SECRETS"
"""A Fargate container's agent finds its secrets (``secrets_blob`` form) in this variable, which ECS sets
from the task definition's ``secrets`` (``MULTINODE_CONTAINER_SECRET_ARN``); the agent removes it from
its environment before anything else runs."""
SECRET_ENV = (ENV_TEMPORAL_PROFILE, ENV_ENCRYPTION_KEYS)
"""The settings variables that grant something: the Temporal profile (credentials included) and the
payload encryption keys. Agents hold them; user code never does."""
_PR_SET_DUMPABLE = 4
_PUBLIC_PROFILE_KEYS = frozenset({"address", "namespace"})


def make_undumpable() -> bool:
    """Other processes of the same user (user code's) cannot read this one's memory, environment or
    descriptors through /proc or ptrace, unless they hold CAP_SYS_PTRACE (root outside a container
    does). Children inherit it until they exec. Whether it worked."""
    return _set_dumpable(0)


def make_dumpable() -> None:
    """Undo ``make_undumpable`` in a forked child that holds nothing secret."""
    _set_dumpable(1)


def _set_dumpable(value: int) -> bool:
    try:
        failed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, value, 0, 0, 0) != 0
    except (OSError, AttributeError):
        failed = True
    if failed:
        print(f"[multinode] warning: could not set PR_SET_DUMPABLE to {value}", file=sys.stderr)
    return not failed


def credential_free_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a process that runs user code: no ``TEMPORAL_*`` variable, and a Temporal profile
    reduced to the address and namespace (which tell nothing that grants access)."""
    try:
        profile = json.loads(environ.get(ENV_TEMPORAL_PROFILE) or "{}")
    except ValueError:
        profile = {}
    public = {
        "address": profile.get("address") or environ.get("TEMPORAL_ADDRESS") or DEFAULT_TEMPORAL_ADDRESS,
        "namespace": profile.get("namespace") or environ.get("TEMPORAL_NAMESPACE") or "default",
    }
    env = {
        k: v
        for k, v in environ.items()
        if not k.startswith("TEMPORAL_") and k not in (*SECRET_ENV, ENV_CREDENTIALS_FD, ENV_CONTAINER_SECRETS)
    }
    env[ENV_TEMPORAL_PROFILE] = json.dumps(public)
    return env


def secrets_blob(settings_env: Mapping[str, str]) -> str:
    """What a local agent reads from ``ENV_CREDENTIALS_FD``: the secret variables of ``settings_env``."""
    return json.dumps({name: settings_env.get(name, "") for name in SECRET_ENV})


def settings_with_secrets(blob: str, environ: Mapping[str, str]) -> MultinodeSettings:
    """Settings from ``environ``, with the secrets given apart (``secrets_blob``)."""
    secrets = json.loads(blob) if blob else {}
    if not isinstance(secrets, dict):
        raise ConfigurationError(
            "The containers' secret is not a JSON object: put the output of `mn container-secret` in it."
        )
    given = {k: str(secrets[k]) for k in SECRET_ENV if secrets.get(k)}
    return MultinodeSettings.from_env({**environ, **given})


def has_secrets(settings_env: Mapping[str, str]) -> bool:
    """Whether ``settings_env`` (``MultinodeSettings.to_env``) holds anything that grants access: encryption
    keys, or a Temporal profile with more than an address and a namespace (an API key, TLS material)."""
    if settings_env.get(ENV_ENCRYPTION_KEYS):
        return True
    try:
        profile = json.loads(settings_env.get(ENV_TEMPORAL_PROFILE) or "{}")
    except ValueError:
        return True
    return any(value for key, value in profile.items() if key not in _PUBLIC_PROFILE_KEYS)


def public_settings_env(settings_env: Mapping[str, str]) -> dict[str, str]:
    """``settings_env`` without its secrets: a profile reduced to address and namespace, no keys."""
    env = credential_free_env(settings_env)
    env.pop(ENV_ENCRYPTION_KEYS, None)
    if ENV_TEMPORAL_PROFILE not in settings_env:
        del env[ENV_TEMPORAL_PROFILE]
    return env
