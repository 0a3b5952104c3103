"""Choosing a backend by name: apart from ``base`` (the interface), which the backends import."""

from __future__ import annotations

from pathlib import Path

from multinode.errors import ConfigurationError
from multinode.provisioner.base import Provisioner


def create_provisioner(name: str, home: Path) -> Provisioner:
    """The backend called ``name`` (``MULTINODE_PROVISIONER``)."""
    if name == "local":
        from multinode.provisioner.local import LocalProvisioner

        return LocalProvisioner(home)
    if name == "fargate":
        from multinode.provisioner.fargate import FargateProvisioner
        from multinode.provisioner.fargate_settings import FargateSettings

        return FargateProvisioner(FargateSettings.from_env())
    raise ConfigurationError(
        f"Unknown provisioner {name!r}: set MULTINODE_PROVISIONER to 'local' or 'fargate'.",
        parameter="MULTINODE_PROVISIONER",
    )
