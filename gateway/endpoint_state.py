"""What the gateway knows about each self-hosted endpoint right now.

Until the control-plane poller has read ``DescribeEndpoint``, the configured
``instance_count`` is taken as in service: that is what the operator says is
running and paying.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EndpointStatus:
    backend: str
    status: str = "Assumed"  # SageMaker EndpointStatus once polled: InService, Updating, ...
    instances_in_service: int = 0
    desired_instances: int = 0
    healthy: bool = True
    last_error: str | None = None
    polled_at: float | None = None

    @property
    def serving(self) -> bool:
        return self.healthy and self.instances_in_service > 0 and self.status in ("Assumed", "InService", "Updating")
