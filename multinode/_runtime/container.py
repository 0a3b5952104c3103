"""Entry point of a container image: ``python -m multinode._runtime.container`` in the tasks folder.

This process is the container's agent (``agent.py``): it holds the Temporal connection and the
credentials it came with. Before connecting, it starts the process that runs the user's code
(``python -m multinode._runtime.user``) from a fresh interpreter, with an environment from which every
credential has been removed, so that neither its environment nor its memory holds one; the two talk
over a socket pair. Local containers are forked from a template instead (``template.py``), to the same
effect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from multinode._credentials import (
    ENV_CONTAINER_SECRETS,
    credential_free_env,
    make_undumpable,
    settings_with_secrets,
)
from multinode._protocol import ENV_CONTAINER_TASK_QUEUE, ENV_INVOCATION_ID
from multinode._runtime.agent import run_agent, start_agent
from multinode._settings import MultinodeSettings


def spawn_user_process(environ: dict[str, str]) -> tuple[int, socket.socket]:
    """Start the user-code process in this folder; its pid and the agent's end of their channel."""
    agent_end, user_end = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "multinode._runtime.user", str(user_end.fileno())],
        pass_fds=[user_end.fileno()],
        env=credential_free_env(environ),
    )
    user_end.close()
    return process.pid, agent_end


def main() -> None:
    # Before anything else: the secrets ECS put in the environment (``MULTINODE_SECRETS``, from the task
    # definition's ``secrets``) leave it, and this process becomes unreadable to others of its user
    # (/proc/PID/environ, ptrace) before the user-code process exists.
    protected = make_undumpable()
    blob = os.environ.pop(ENV_CONTAINER_SECRETS, None)
    if blob is not None and not protected:
        # /proc/1/environ still holds the variable as ECS set it: only non-dumpability keeps user code out.
        sys.exit("[multinode] refusing to run: the container holds secrets and could not make itself non-dumpable")
    environ = dict(os.environ)
    settings = settings_with_secrets(blob, environ) if blob is not None else MultinodeSettings.from_env(environ)
    user_pid, sock = spawn_user_process(environ)
    agent = start_agent(os.environ[ENV_CONTAINER_TASK_QUEUE], settings, user_pid, sock)
    agent.assign(os.environ[ENV_INVOCATION_ID])
    run_agent(agent)


if __name__ == "__main__":
    main()
