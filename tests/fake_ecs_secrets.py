"""The ``secrets`` of an ECS container definition, read from moto as ECS reads them at task start.

``valueFrom`` is a Secrets Manager secret ARN (the whole secret string, or
``ARN:json-key:version-stage:version-id`` for one key of a JSON secret; the key, stage and version may
each be empty), or an SSM parameter ARN or name (SecureString values decrypted). A secret ECS cannot
read fails the task's start with a ``ResourceInitializationError`` reason in ECS's words.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

SECRETS_ERROR = (
    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: "
)
"""Start of ECS's ``stoppedReason`` when a task's ``secrets`` cannot be read."""


class StartFailure(Exception):
    """The task stops as TaskFailedToStart with this text as its ``stoppedReason``."""


class SecretReader:
    def __init__(self, session: Any, region: str) -> None:
        self._session = session
        self.region = region
        """The task's region: where an SSM parameter given by name lives."""
        self._clients: dict[tuple[str, str], Any] = {}

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._session.client(service, region_name=region)
        return self._clients[key]

    def read(self, value_from: str) -> str:
        """The value ECS would put in the container's environment, or :class:`StartFailure`."""
        parts = value_from.split(":")
        if value_from.startswith("arn:") and len(parts) >= 7 and parts[2] == "secretsmanager":
            return self._secrets_manager(":".join(parts[:7]), parts[3], *(parts[7:] + ["", "", ""])[:3])
        region = self.region
        if value_from.startswith("arn:"):
            if len(parts) < 6 or parts[2] != "ssm" or not parts[5].startswith("parameter/"):
                raise StartFailure(f"{SECRETS_ERROR}invalid secret reference {value_from!r}")
            region = parts[3]
        try:
            answer = self._client("ssm", region).get_parameters(Names=[value_from], WithDecryption=True)
        except ClientError as exc:
            raise StartFailure(
                f"{SECRETS_ERROR}unable to retrieve secrets from ssm: service call has been retried 1 time(s): "
                f"{_error(exc)}"
            ) from exc
        if answer.get("InvalidParameters") or not answer.get("Parameters"):
            raise StartFailure(f"{SECRETS_ERROR}unable to retrieve secrets from ssm: invalid parameters: {value_from}")
        return str(answer["Parameters"][0]["Value"])

    def _secrets_manager(self, arn: str, region: str, json_key: str, stage: str, version: str) -> str:
        failed = f"{SECRETS_ERROR}unable to retrieve secret from asm: service call has been retried 1 time(s): "
        kwargs = {"SecretId": arn}
        if stage:
            kwargs["VersionStage"] = stage
        if version:
            kwargs["VersionId"] = version
        try:
            value = self._client("secretsmanager", region).get_secret_value(**kwargs).get("SecretString")
        except ClientError as exc:
            raise StartFailure(f"{failed}failed to fetch secret {arn} from secrets manager: {_error(exc)}") from exc
        if value is None:
            raise StartFailure(f"{failed}secret {arn} has no string value")
        if not json_key:
            return str(value)
        try:
            chosen = json.loads(value)[json_key]
        except (ValueError, KeyError, TypeError):
            raise StartFailure(
                f"{failed}retrieved secret from Secrets Manager did not contain json key {json_key}"
            ) from None
        return chosen if isinstance(chosen, str) else json.dumps(chosen)


def _error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}"
