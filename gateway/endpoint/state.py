"""What the gateway knows about each self-hosted endpoint right now.

An endpoint is in one of three states, and only the last two are charged (instance
time) and routed to:

* ``unconfirmed`` — no ``DescribeEndpoint`` has answered yet (not polled yet, no
  credentials, no permission, control plane unreachable). Nothing is known to run,
  so nothing is assumed to: 0 instances in service, no spend. ``reason`` says why.
* ``assumed`` — still unconfirmed, but the config says how many instances run
  (``assumed_instances``): a deployment that may invoke its endpoint but not
  describe it. Those are charged and used until a ``DescribeEndpoint`` answers.
* ``confirmed`` — a ``DescribeEndpoint`` answered (even "not found"); its status and
  counts apply, and a later failed call keeps them::

    status = EndpointStatus.initial("sagemaker", assumed_instances=0)
    status.state, status.serving   # ("unconfirmed", False)
"""
from __future__ import annotations

from dataclasses import dataclass

UNCONFIRMED = "unconfirmed"  # status before any DescribeEndpoint answered, nothing assumed
ASSUMED = "Assumed"  # status before any DescribeEndpoint answered, config's assumed_instances in service
_SERVING = (ASSUMED, "InService", "Updating")


@dataclass
class EndpointStatus:
    backend: str
    status: str = UNCONFIRMED  # else ASSUMED, or SageMaker's EndpointStatus once described: InService, ...
    instances_in_service: int = 0
    desired_instances: int = 0
    healthy: bool = True
    last_error: str | None = None
    polled_at: float | None = None  # epoch seconds of the last DescribeEndpoint that answered
    reason: str | None = None  # while not confirmed: why not ("no AWS credentials", ...)

    @classmethod
    def initial(cls, backend: str, assumed_instances: int = 0, reason: str | None = "not described yet"):
        status = cls(backend, reason=reason)
        status.assume(assumed_instances)
        return status

    def assume(self, instances: int) -> None:
        """Take the config's count as in service, as long as no DescribeEndpoint has answered."""
        if self.confirmed:
            return
        self.status = ASSUMED if instances > 0 else UNCONFIRMED
        self.instances_in_service = self.desired_instances = instances

    @property
    def confirmed(self) -> bool:
        return self.polled_at is not None

    @property
    def state(self) -> str:
        """``unconfirmed``, ``assumed`` or ``confirmed``."""
        if self.confirmed:
            return "confirmed"
        return "assumed" if self.status == ASSUMED else UNCONFIRMED

    @property
    def charged(self) -> bool:
        """Whether its instance time is accrued: not while nobody knows that it runs."""
        return self.status != UNCONFIRMED

    @property
    def serving(self) -> bool:
        return self.healthy and self.instances_in_service > 0 and self.status in _SERVING

    def as_dict(self) -> dict:
        """For ``/readyz`` and ``/admin/routing``."""
        return {"state": self.state, "status": self.status, "reason": None if self.confirmed else self.reason,
                "instances_in_service": self.instances_in_service, "desired_instances": self.desired_instances,
                "last_error": self.last_error, "confirmed_at": self.polled_at}
