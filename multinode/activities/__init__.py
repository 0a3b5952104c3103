"""Temporal activities of the control plane: where it meets the outside world."""

from multinode.activities.provisioning import ProvisioningActivities

__all__ = ["ProvisioningActivities"]
