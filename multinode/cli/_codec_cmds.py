"""Commands of ``mn`` on payload encryption (``encryption-key``, ``codec-server``), on the one app."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from multinode.cli._common import JsonOpt, _print_json, app, console, err_console


@app.command("encryption-key")
def encryption_key(
    key_id: Annotated[
        str | None, typer.Option("--id", help="Key id (letters, digits, '.', '_', '-'); default: a random one.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a new payload encryption key, KEY_ID:BASE64, for MULTINODE_ENCRYPTION_KEYS."""
    from multinode._codec import ENV_ENCRYPTION_KEYS, new_key

    key = new_key(key_id)
    if as_json:
        _print_json({"key": key})
        return
    print(key)
    # On stderr: stdout is the key alone, for `export MULTINODE_ENCRYPTION_KEYS=$(mn encryption-key)`.
    err_console.print(
        f"Set {ENV_ENCRYPTION_KEYS} to it for every client, worker and container (keep it secret); to rotate, "
        "put the new key first and keep the old ones listed after it: NEW,OLD.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command("codec-server")
def codec_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    host: Annotated[
        str, typer.Option(help="Address to bind; the server decrypts for anyone who reaches it.")
    ] = "127.0.0.1",
    web_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--web-origin",
            help="Origin of the Temporal Web UI allowed to call it (repeatable); "
            "default: http://localhost:8233 and http://127.0.0.1:8233.",
        ),
    ] = None,
) -> None:
    """Serve Temporal's remote codec protocol so the Web UI and `temporal` CLI show decrypted payloads."""
    from multinode._codec import ENV_ENCRYPTION_KEYS, EncryptionCodec, parse_keys
    from multinode._credentials import make_undumpable
    from multinode.control_plane.codec_server import DEFAULT_ORIGINS, CodecServer
    from multinode.errors import ConfigurationError, MultinodeError

    make_undumpable()  # it holds the keys: other processes of this user (functions' code) cannot read them
    keys = parse_keys(os.environ.get(ENV_ENCRYPTION_KEYS, ""))
    if not keys:
        raise ConfigurationError(
            f"Set {ENV_ENCRYPTION_KEYS} to the keys your workers use (KEY_ID:BASE64,...); "
            "run `mn encryption-key` to make one.",
            parameter=ENV_ENCRYPTION_KEYS,
        )
    # Plain payloads (search attributes' neighbours, history from before encryption) are shown as they are.
    codec = EncryptionCodec(keys, accept_plain=True)
    server = CodecServer(codec, host=host, port=port, origins=web_origin or DEFAULT_ORIGINS)
    try:
        server.start()
    except OSError as exc:
        raise MultinodeError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another port with --port."
        ) from exc
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    url = server.url
    console.print(
        f"Codec server at {url} (keys {', '.join(k.key_id for k in keys)}; "
        f"web origins {', '.join(sorted(server.origins))}). Ctrl-C stops it.\n"
        f"  Web UI: temporal server start-dev --ui-codec-endpoint {url}, or the Web UI's settings, "
        f"Codec Server: {url}\n"
        f"  CLI:    temporal workflow show --workflow-id ID --codec-endpoint {url}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    console.print("Stopped.")


@app.command("container-secret")
def container_secret() -> None:
    """Print the containers' secrets (Temporal credentials, encryption keys) as the JSON value of the
    secret named by MULTINODE_CONTAINER_SECRET_ARN (Fargate containers read it; never RunTask overrides)."""
    from multinode._credentials import has_secrets, secrets_blob
    from multinode._settings import ENV_TEMPORAL_PROFILE, MultinodeSettings

    settings_env = MultinodeSettings.from_env().to_env()  # the container's profile when one is configured
    profile = json.loads(settings_env[ENV_TEMPORAL_PROFILE])
    tls = profile.get("tls")
    for key in ("server_ca_cert", "client_cert", "client_key") if isinstance(tls, dict) else ():
        source = tls.get(key)
        if isinstance(source, dict) and source.get("path"):  # a container has no such file: inline it
            tls[key] = {"data": Path(source["path"]).read_text()}
    settings_env[ENV_TEMPORAL_PROFILE] = json.dumps(profile)
    print(secrets_blob(settings_env))
    if not has_secrets(settings_env):
        err_console.print(
            "Nothing secret in this setting (no Temporal API key or TLS client key, no encryption keys): containers "
            "need no secret, but storing this one does no harm.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    err_console.print(
        "Store it with `mn container-secret | aws secretsmanager put-secret-value --secret-id ARN "
        "--secret-string file:///dev/stdin` (ARN: `terraform output container_secret_arn`); the worker's "
        "MULTINODE_CONTAINER_SECRET_ARN names it. Update it whenever the keys or credentials change.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
