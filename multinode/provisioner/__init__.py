"""Backends that start and stop containers. They know nothing about Temporal."""

from multinode.provisioner.base import CapacityUnavailableError, ContainerSpec, ContainerStatus, Provisioner
from multinode.provisioner.factory import create_provisioner

__all__ = ["CapacityUnavailableError", "ContainerSpec", "ContainerStatus", "Provisioner", "create_provisioner"]
