"""What the gateway knows and does about each SageMaker endpoint: its state, the control
plane (DescribeEndpoint poller, capacity actuator) and the instance-time clock that charges it."""
from .clock import EndpointClock
from .control import CapacityActuator, EndpointPoller
from .state import EndpointStatus

__all__ = ["CapacityActuator", "EndpointClock", "EndpointPoller", "EndpointStatus"]
