"""Control-plane activities, by concern: ``provisioning`` (a container's life), ``quota`` (concurrency
slots), ``children`` (nested invocations), ``log_reads`` (what a container printed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio.client import Client

from multinode._settings import MultinodeSettings
from multinode.activities.children import ChildrenActivities
from multinode.activities.log_reads import LogActivities
from multinode.activities.provisioning import ProvisioningActivities
from multinode.activities.quota import QuotaActivities
from multinode.provisioner import Provisioner


def all_activities(
    client: Client, settings: MultinodeSettings, provisioners: dict[str, Provisioner]
) -> list[Callable[..., Any]]:
    """Every activity a control-plane worker runs."""
    return [
        *ProvisioningActivities(client, settings, provisioners).all(),
        *QuotaActivities(client).all(),
        *ChildrenActivities(client).all(),
        *LogActivities(provisioners).all(),
    ]


__all__ = ["ChildrenActivities", "LogActivities", "ProvisioningActivities", "QuotaActivities", "all_activities"]
