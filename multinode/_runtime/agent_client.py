"""The Temporal client of user code: every call goes through the container's agent, which holds the
credentials and decides what a function may do (see ``gate.py``).

The SDK inside a container works as everywhere else (``.start``, ``.get``, ``.await_result`` ...):
only its transport differs. The process that runs user code never connects to Temporal itself.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import google.protobuf.message
from temporalio.client import Client
from temporalio.service import ConnectConfig, RPCError, RPCStatusCode, ServiceClient, ServiceResponse

from multinode._runtime.channel import Channel

AGENT_TARGET = "multinode-agent"
"""What the client reports as its server address: the calls go to the container's agent."""


class AgentServiceClient(ServiceClient):
    """A ``ServiceClient`` whose calls are frames on the agent channel; answers come back through ``answer``."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(ConnectConfig(target_host=AGENT_TARGET))
        self._channel = channel
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Future[bytes], type[Any]]] = {}
        self._lock = threading.Lock()
        self._closed: str | None = None

    @property
    def worker_service_client(self) -> Any:
        raise RuntimeError("a function cannot run a Temporal worker")

    def update_rpc_metadata(self, metadata: Mapping[str, str | bytes]) -> None:
        raise RPCError("a function cannot change the agent's connection", RPCStatusCode.PERMISSION_DENIED, b"")

    def update_api_key(self, api_key: str | None) -> None:
        raise RPCError("a function cannot change the agent's connection", RPCStatusCode.PERMISSION_DENIED, b"")

    async def _rpc_call(
        self,
        rpc: str,
        req: google.protobuf.message.Message,
        resp_type: type[ServiceResponse],
        *,
        service: str,
        retry: bool,
        metadata: Mapping[str, str | bytes],
        timeout: timedelta | None,
    ) -> ServiceResponse:
        call_id = next(self._ids)
        future: Future[bytes] = Future()
        with self._lock:
            if self._closed is not None:
                raise RPCError(self._closed, RPCStatusCode.UNAVAILABLE, b"")
            self._pending[call_id] = (future, resp_type)
        header = {
            "op": "rpc",
            "id": call_id,
            "service": service,
            "rpc": rpc,
            "retry": retry,
            "timeout": timeout.total_seconds() if timeout is not None else None,
        }
        try:
            await asyncio.to_thread(self._channel.send, header, req.SerializeToString())
            body = await asyncio.wrap_future(future)
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
        response = resp_type()
        response.ParseFromString(body)
        return response

    def answer(self, header: dict[str, Any], body: bytes) -> None:
        """Called by the channel's reader with an ``rpc_result`` or ``rpc_error`` frame."""
        with self._lock:
            entry = self._pending.get(int(header.get("id", 0)))
        if entry is None:
            return
        future, _ = entry
        if future.done():
            return
        if header["op"] == "rpc_result":
            future.set_result(body)
        else:
            future.set_exception(RPCError(str(header.get("message")), RPCStatusCode(int(header["status"])), body))

    def close(self, reason: str) -> None:
        """The agent is gone: every call in flight, and every later one, fails with ``reason``."""
        with self._lock:
            self._closed = reason
            pending = list(self._pending.values())
        for future, _ in pending:
            if not future.done():
                future.set_exception(RPCError(reason, RPCStatusCode.UNAVAILABLE, b""))


def agent_client(service: AgentServiceClient, namespace: str) -> Client:
    return Client(service, namespace=namespace)
