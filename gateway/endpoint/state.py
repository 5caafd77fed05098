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

An endpoint hosting an inference component (``inference_component``) is billed for the
instances its variant runs (``billed_instances``) but serves only where a copy runs:
``instances_in_service`` then counts the instances that hold copies, and the copy counts
(``copies``, ``desired_copies``, ``component_status``) come from DescribeInferenceComponent.
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
    instances_billed: int | None = None  # instances AWS bills; None: instances_in_service
    inference_component: str | None = None
    copies: int = 0  # CurrentCopyCount of the component
    desired_copies: int = 0
    component_status: str | None = None  # InferenceComponentStatus (or NotFound)

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
        self.instances_billed = None

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
    def billed_instances(self) -> int:
        """Instances whose time is charged: all the variant runs, copies or not."""
        return self.instances_in_service if self.instances_billed is None else self.instances_billed

    @property
    def serving(self) -> bool:
        return self.healthy and self.instances_in_service > 0 and self.status in _SERVING

    def as_dict(self) -> dict:
        """For ``/readyz`` and ``/admin/routing``."""
        return {"state": self.state, "status": self.status, "reason": None if self.confirmed else self.reason,
                "instances_in_service": self.instances_in_service, "desired_instances": self.desired_instances,
                "instances_billed": self.billed_instances,
                "inference_component": None if self.inference_component is None else {
                    "name": self.inference_component, "status": self.component_status, "copies": self.copies,
                    "desired_copies": self.desired_copies},
                "last_error": self.last_error, "confirmed_at": self.polled_at}
