"""How much one control-plane worker with the Fargate provisioner sustains, against moto's server.

    .venv/bin/python benchmarks/bench_fargate_worker.py [--bursts 200,500] [--hold 15] [--stop-seconds 10]
        [--threads N] [--json]

moto's server (ThreadedMotoServer on 127.0.0.1, port 0; ECS tasks move only on StopTask, as in
tests/aws.py) runs in a process of its own, so this process holds only what a worker holds: one
FargateProvisioner, the provisioning activities (``provision``, ``watch``, ``deprovision``, run through
temporalio's ActivityEnvironment: no Temporal server) and the executor of blocking calls
(``MULTINODE_PROVISIONER_THREADS``, or ``--threads``).

For each burst of N: N provisions at once (RunTask); N watches for ``--hold`` seconds (status polls,
DescribeTasks shared between them); N deprovisions at once (StopTask, then ``request_stop`` every 2 s
until the task is gone), the watches ending as their containers go. ECS takes a while to stop a task
(SIGTERM, stopTimeout, detaching the network interface) where moto stops it at once, so a botocore hook
on the answers reports a stopped task as DEACTIVATING for ``--stop-seconds`` after its StopTask, and the
deprovisions poll as they would against ECS.

Per phase: wall time, activities per second, AWS calls (per second), this process's CPU per activity,
the worst heartbeat gap (the longest any activity of the phase went without a heartbeat, its start and
end included; a watch is retried elsewhere after 30 s), the executor's peak queue and the event loop's
worst lag (the health check wants an answer within 1 s). moto answers slower than ECS and shares the
machine's CPUs: the calls per second are moto's as much as the worker's, the CPU per activity is the
worker's own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import boto3
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from multinode._config import FunctionConfig
from multinode._protocol import ContainerExit, ContainerHandle, ProvisionInput
from multinode._settings import MultinodeSettings
from multinode.activities._blocking import BlockingExecutor, configure_blocking, provisioner_threads
from multinode.activities.provisioning import ProvisioningActivities
from multinode.provisioner.base import ContainerStatus
from multinode.provisioner.fargate import FargateProvisioner
from multinode.provisioner.fargate_settings import FargateSettings

T = TypeVar("T")

REGION = "us-east-1"
IMAGE = "public.ecr.aws/docker/library/python:3.12-slim"
LAG_PROBE_SECONDS = 0.05
MOTO_SERVER = """
import json, logging, sys, urllib.request
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
body = {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}}
request = urllib.request.Request(url + "/moto-api/state-manager/set-transition", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
urllib.request.urlopen(request, timeout=60).read()
print(url, flush=True)
sys.stdin.read()
server.stop()
"""
"""moto's server in a child process: prints its URL, stops when its stdin closes."""


class MotoServer:
    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError("moto's server did not start")

    def stop(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def aws_environment(url: str) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )


def fargate_settings() -> FargateSettings:
    """A cluster, a subnet and a security group in moto."""
    ec2 = boto3.session.Session().client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's task ENIs need DNS names
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.0.0/18")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="bench", Description="bench", VpcId=vpc)["GroupId"]
    boto3.session.Session().client("ecs", region_name=REGION).create_cluster(clusterName="bench")
    return FargateSettings(
        region=REGION,
        cluster="bench",
        subnets=[str(subnet)],
        security_groups=[str(group)],
        execution_role_arn="arn:aws:iam::123456789012:role/bench-execution",
    )


class BenchProvisioner(FargateProvisioner):
    """The Fargate provisioner, counting its AWS calls and status polls; stopped tasks stay DEACTIVATING
    for ``stop_seconds`` after StopTask, as on ECS."""

    def __init__(self, settings: FargateSettings, stop_seconds: float) -> None:
        super().__init__(settings)
        self.calls: Counter[str] = Counter()
        self.polls = itertools.count()
        self._stop_seconds = stop_seconds
        self._stopped_at: dict[str, float] = {}
        self._ecs.meta.events.register("after-call.ecs", self._after_call)

    def status(self, handle_id: str) -> ContainerStatus:
        next(self.polls)
        return super().status(handle_id)

    def _after_call(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[str(model.name)] += 1
        now = time.monotonic()
        if model.name == "StopTask" and parsed.get("task"):
            self._stopped_at.setdefault(str(parsed["task"]["taskArn"]), now)
        tasks = [parsed["task"]] if parsed.get("task") else list(parsed.get("tasks") or [])
        for task in tasks:
            stopped = self._stopped_at.get(str(task.get("taskArn")))
            if stopped is not None and now - stopped < self._stop_seconds:
                task["lastStatus"] = "DEACTIVATING"
                for container in task.get("containers") or []:
                    container["lastStatus"] = "RUNNING"


@dataclass
class Tracked:
    """One activity: when it last heartbeated (or started) and its longest time without."""

    last: float = field(default_factory=time.monotonic)
    worst_gap: float = 0.0

    def beat(self, *_: Any) -> None:
        now = time.monotonic()
        self.worst_gap = max(self.worst_gap, now - self.last)
        self.last = now


async def tracked(track: Tracked, fn: Callable[[T], Awaitable[Any]], argument: T) -> Any:
    env = ActivityEnvironment()
    env.on_heartbeat = track.beat
    try:
        return await env.run(fn, argument)
    finally:
        track.beat()  # the end counts as the last heartbeat


class LoopLag:
    """The event loop's worst lag: how late a short sleep wakes up."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.ensure_future(self._measure())

    async def _measure(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.worst = max(self.worst, time.monotonic() - asked - LAG_PROBE_SECONDS)

    def close(self) -> None:
        self._task.cancel()


@dataclass
class Phase:
    """What one phase measures, from its start."""

    name: str
    burst: int
    provisioner: BenchProvisioner
    executor: BlockingExecutor
    lag: LoopLag
    started: float = field(default_factory=time.monotonic)
    cpu: float = field(default_factory=time.process_time)
    calls: Counter[str] = field(default_factory=Counter)
    polls: int = 0

    def __post_init__(self) -> None:
        self.calls = Counter(self.provisioner.calls)
        self.polls = next(self.provisioner.polls)
        self.executor.reset_peak()
        self.lag.worst = 0.0

    def result(self, activities: int, tracks: list[Tracked]) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        calls = Counter(self.provisioner.calls)
        calls.subtract(self.calls)
        return {
            "burst": self.burst,
            "phase": self.name,
            "wall_seconds": round(wall, 2),
            "activities_per_second": round(activities / wall, 1),
            "aws_calls": {name: count for name, count in sorted(calls.items()) if count},
            "aws_calls_per_second": round(sum(calls.values()) / wall, 1),
            "status_polls": next(self.provisioner.polls) - self.polls - 1,
            "cpu_ms_per_activity": round((time.process_time() - self.cpu) * 1000 / max(activities, 1), 2),
            "worst_heartbeat_gap_seconds": round(max((t.worst_gap for t in tracks), default=0.0), 2),
            "executor_peak_queue": self.executor.load().peak_queued,
            "worst_loop_lag_seconds": round(self.lag.worst, 3),
        }


async def burst(
    n: int, hold: float, activities: ProvisioningActivities, provisioner: BenchProvisioner, executor: BlockingExecutor
) -> list[dict[str, Any]]:
    lag = LoopLag()
    results: list[dict[str, Any]] = []
    try:
        phase = Phase("provision", n, provisioner, executor, lag)
        requests = [request() for _ in range(n)]
        provisions = [Tracked() for _ in requests]
        handles: list[ContainerHandle] = await asyncio.gather(
            *(tracked(t, activities.provision, r) for t, r in zip(provisions, requests, strict=True))
        )
        results.append(phase.result(n, provisions))

        phase = Phase("watch", n, provisioner, executor, lag)
        watches = [Tracked() for _ in handles]
        watching = [
            asyncio.ensure_future(tracked(t, activities.watch, h)) for t, h in zip(watches, handles, strict=True)
        ]
        done, _ = await asyncio.wait(watching, timeout=hold)
        if done:
            raise RuntimeError(f"{len(done)} watches ended before their containers were stopped")
        results.append(phase.result(n, watches))

        phase = Phase("deprovision", n, provisioner, executor, lag)
        deprovisions = [Tracked() for _ in handles]
        await asyncio.gather(
            *(tracked(t, activities.deprovision, h) for t, h in zip(deprovisions, handles, strict=True))
        )
        exits: list[ContainerExit] = await asyncio.gather(*watching)
        unexpected = [e for e in exits if e.exit_code not in (None, 0)]
        if unexpected:
            raise RuntimeError(f"watches saw unexpected exits: {unexpected[:3]}")
        results.append(phase.result(n, deprovisions + watches))
    finally:
        lag.close()
    return results


def request() -> ProvisionInput:
    invocation = f"bench-{uuid.uuid4().hex}"
    return ProvisionInput(
        invocation_id=invocation,
        execution_id=f"{invocation}-1",
        project_name="bench",
        version_id="v1",
        function_name="noop",
        config=FunctionConfig(cpu=0.25, memory_mib=512),
        provisioner="fargate",
        artifact={"image": IMAGE},
    )


def line(result: dict[str, Any]) -> str:
    calls = ", ".join(f"{name} {count}" for name, count in result["aws_calls"].items())
    return (
        f"{result['burst']:>5} {result['phase']:<11} {result['wall_seconds']:>7.2f} s "
        f"{result['activities_per_second']:>7.1f}/s  AWS {result['aws_calls_per_second']:>6.1f}/s ({calls}); "
        f"{result['status_polls']} status polls; CPU {result['cpu_ms_per_activity']} ms/activity; "
        f"worst heartbeat gap {result['worst_heartbeat_gap_seconds']} s; "
        f"peak queue {result['executor_peak_queue']}; worst loop lag {result['worst_loop_lag_seconds']} s"
    )


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    executor = configure_blocking(args.threads)
    provisioner = BenchProvisioner(fargate_settings(), args.stop_seconds)
    # No Temporal server: the client is used only to record a capacity wait, which moto never causes.
    activities = ProvisioningActivities(cast(Client, None), MultinodeSettings(), {"fargate": provisioner})
    await tracked(Tracked(), activities.provision, request())  # registers the task definition
    results: list[dict[str, Any]] = []
    for n in args.bursts:
        for result in await burst(n, args.hold, activities, provisioner, executor):
            results.append(result)
            if not args.json:
                print(line(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=lambda s: [int(n) for n in s.split(",")], default=[200, 500])
    parser.add_argument("--hold", type=float, default=15.0, help="seconds the watches run between the bursts")
    parser.add_argument("--stop-seconds", type=float, default=10.0, help="how long ECS takes to stop a task")
    parser.add_argument("--threads", type=int, default=None, help="default: MULTINODE_PROVISIONER_THREADS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.threads = args.threads or provisioner_threads()
    moto = MotoServer()
    try:
        aws_environment(moto.url)
        if not args.json:
            print(
                f"one worker, {args.threads} threads for blocking calls, moto at {moto.url}, "
                f"{threading.active_count()} threads at start; --hold {args.hold:g} s, --stop-seconds "
                f"{args.stop_seconds:g} s",
                flush=True,
            )
        results = asyncio.run(run(args))
    finally:
        moto.stop()
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
