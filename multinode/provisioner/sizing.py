"""Fargate task sizes: the smallest valid (CPU, memory) combination that covers a function's needs.

Fargate accepts only some combinations of task CPU and memory
(https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size).
A function asks for any ``cpu`` up to 16 vCPUs and any ``memory`` up to 64 GiB; its task gets the first
size in this table that has at least that much of both.
"""

from __future__ import annotations

import math

from multinode.errors import ConfigurationError

CPU_UNITS_PER_VCPU = 1024
"""ECS counts CPU in units: 1024 units are one virtual CPU."""

FARGATE_SIZES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (256, (512, 1024, 2048)),
    (512, tuple(range(1024, 4096 + 1, 1024))),
    (1024, tuple(range(2048, 8192 + 1, 1024))),
    (2048, tuple(range(4096, 16384 + 1, 1024))),
    (4096, tuple(range(8192, 30720 + 1, 1024))),
    (8192, tuple(range(16384, 61440 + 1, 4096))),
    (16384, tuple(range(32768, 122880 + 1, 8192))),
)
"""Every valid Fargate (CPU units, memory MiB) combination, by CPU size, memory ascending."""


def fargate_size(cpu: float, memory_mib: int) -> tuple[int, int]:
    """The smallest Fargate ``(cpu units, memory MiB)`` with at least ``cpu`` vCPUs and ``memory_mib`` MiB.

    CPU rounds up to the next size; memory rounds up to the next value valid for that size, rises to the
    size's minimum, and moves the task to a larger CPU size when it is over the size's maximum.
    """
    if not cpu > 0 or memory_mib <= 0:
        raise ConfigurationError(
            f"A Fargate task needs more than 0 CPU and memory, got cpu={cpu} and memory={memory_mib} MiB."
        )
    # A tolerance so that e.g. 0.25 * 1024 computed in floating point still counts as 256.
    units = math.ceil(cpu * CPU_UNITS_PER_VCPU - 1e-6)
    for size, memories in FARGATE_SIZES:
        if size < units:
            continue
        for memory in memories:
            if memory >= memory_mib:
                return size, memory
    largest_cpu, largest_memories = FARGATE_SIZES[-1]
    raise ConfigurationError(
        f"No Fargate task size has {cpu:g} vCPUs and {memory_mib} MiB: the largest is "
        f"{largest_cpu // CPU_UNITS_PER_VCPU} vCPUs with {largest_memories[-1] // 1024} GiB. "
        "Lower `cpu` or `memory` in @mn.function."
    )
