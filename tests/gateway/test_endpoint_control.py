"""EndpointPoller and CapacityActuator against moto's server mode (a local stand-in for the SageMaker API).

The gateway's clients find moto through ``AWS_ENDPOINT_URL_SAGEMAKER``, exactly as an operator
would point them at another endpoint. moto runs in this process, so a test can put an endpoint
into ``Updating`` (moto itself returns to ``InService`` at once) through moto's backend.
"""
from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from moto.backends import get_backend

from aws_standin import ACCOUNT, REGION, make_endpoint

from gateway.config import SageMakerBackendConfig
from gateway.endpoint.control import CapacityActuator, EndpointPoller, unconfirmed_reason
from gateway.endpoint.state import EndpointStatus



@pytest.fixture(scope="module")
def test_client(moto_url):
    """For setup and checks; one per module, as each boto3 client takes ~0.1 s to build."""
    return boto3.client("sagemaker", region_name=REGION, endpoint_url=moto_url)


@pytest.fixture
def aws(moto_url, test_client, monkeypatch):
    """The env an operator would set, which the code under test must follow on its own."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)
    return test_client




def backend_cfg(endpoint: str, min_instances=0, max_instances=4, variant="AllTraffic") -> SageMakerBackendConfig:
    return SageMakerBackendConfig(
        name="sm", endpoint_name=endpoint, region=REGION, instance_type="ml.g4dn.xlarge",
        hourly_price_usd=Decimal("0.7364"), max_tokens_per_second=500.0, context_window=8192,
        min_instances=min_instances, max_instances=max_instances, variant_name=variant,
    )


def current_count(sm, endpoint: str) -> int:
    return sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]["CurrentInstanceCount"]


async def polled(cfg, assumed: int = 1, **kw) -> EndpointStatus:
    status = EndpointStatus.initial("sm", assumed_instances=assumed)
    await EndpointPoller(cfg, status, **kw).poll(0.0)
    return status


def test_poller_reads_status_and_instance_count(aws):
    endpoint = make_endpoint(aws, instances=2)
    status = asyncio.run(polled(backend_cfg(endpoint)))
    assert (status.status, status.instances_in_service, status.desired_instances) == ("InService", 2, 2)
    assert status.healthy and status.last_error is None and status.polled_at == 0.0


def test_poller_polls_only_when_due(aws):
    calls = []

    def factory():
        calls.append(1)
        return boto3.client("sagemaker", region_name=REGION)

    async def run():
        poller = EndpointPoller(backend_cfg(make_endpoint(aws)), EndpointStatus("sm"), factory, interval_s=15)
        return [await poller.poll(t) for t in (100.0, 101.0, 114.9, 115.0)]

    assert asyncio.run(run()) == [True, False, False, True]
    assert len(calls) == 1  # the client is created once, lazily


def test_unknown_endpoint_is_not_serving_and_costs_nothing(aws, monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-logged")
    with caplog.at_level(logging.DEBUG):
        status = asyncio.run(polled(backend_cfg("no-such-endpoint")))
    assert status.last_error.startswith("DescribeEndpoint: ValidationException")
    assert "no-such-endpoint" in status.last_error
    # a missing endpoint neither serves nor bills: routing and accrual must not assume it
    assert (status.status, status.instances_in_service, status.desired_instances) == ("NotFound", 0, 0)
    assert not status.healthy and not status.serving
    assert "s3cr3t" not in status.last_error and "s3cr3t" not in caplog.text


def test_missing_variant_is_an_error_not_a_crash(aws):
    status = asyncio.run(polled(backend_cfg(make_endpoint(aws), variant="Blue")))
    assert status.status == "InService" and (status.instances_in_service, status.desired_instances) == (1, 1)
    assert "no variant 'Blue'" in status.last_error


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """Nowhere in the standard chain holds credentials (env, files; conftest disables IMDS)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))

    def restore():
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(var, "testing")
    return restore


def test_no_credentials_keeps_assumed_instances_and_says_why(aws, no_credentials):
    status = asyncio.run(polled(backend_cfg(make_endpoint(aws))))
    assert status.last_error == "DescribeEndpoint: NoCredentialsError: Unable to locate credentials"
    assert (status.state, status.status, status.reason) == ("assumed", "Assumed", "no AWS credentials")
    assert status.instances_in_service == 1 and status.serving and status.charged


def test_without_credentials_the_endpoint_stays_unconfirmed_and_says_so_once(aws, no_credentials, caplog):
    endpoint = make_endpoint(aws, instances=2)
    status = EndpointStatus.initial("sm")
    poller = EndpointPoller(backend_cfg(endpoint), status, interval_s=15)

    async def run():
        started = time.monotonic()
        await poller.poll(0.0)
        took = time.monotonic() - started
        await poller.poll(20.0)
        return took

    with caplog.at_level(logging.INFO, logger="gateway.endpoint_control"):
        took = asyncio.run(run())
    assert took < 3, f"a describe without credentials took {took:.1f} s"
    assert (status.state, status.status, status.reason) == ("unconfirmed", "unconfirmed", "no AWS credentials")
    assert (status.instances_in_service, status.serving, status.charged, status.polled_at) == (0, False, False, None)
    said = [r.getMessage() for r in caplog.records if "unconfirmed" in r.getMessage()]
    assert len(said) == 1 and "no AWS credentials" in said[0] and "assumed_instances" in said[0], said
    # Credentials that turn up later are found: the client is rebuilt while there were none.
    no_credentials()
    asyncio.run(poller.poll(40.0))
    assert (status.state, status.status, status.instances_in_service, status.reason) == ("confirmed", "InService", 2,
                                                                                          None)
    assert status.serving and status.charged and status.polled_at == 40.0


def test_unreachable_control_plane_fails_fast_and_stays_unconfirmed(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    status = asyncio.run(polled(backend_cfg("gateway-selfhosted"), assumed=0))
    assert time.monotonic() - started < 10
    assert (status.state, status.reason, status.instances_in_service) == ("unconfirmed", "control plane unreachable", 0)
    assert status.last_error.startswith("DescribeEndpoint: EndpointConnectionError")


DENIED = ("AccessDeniedException", "User: arn:aws:iam::123456789012:user/app is not authorized to perform: "
          "sagemaker:DescribeEndpoint on resource: arn:aws:sagemaker:us-east-1:123456789012:endpoint/x")


def test_not_authorized_to_describe_stays_unconfirmed_until_allowed(aws, moto_url):
    endpoint = make_endpoint(aws, instances=2)
    front = ErrorFront(moto_url, *DENIED)
    try:
        client = boto3.client("sagemaker", region_name=REGION, endpoint_url=front.url)
        status = EndpointStatus.initial("sm")
        poller = EndpointPoller(backend_cfg(endpoint), status, lambda: client)
        asyncio.run(poller.poll(0.0))
        assert (status.state, status.reason, status.serving) == ("unconfirmed", "not authorized to DescribeEndpoint",
                                                                 False)
        assert status.last_error.startswith("DescribeEndpoint: AccessDeniedException: User:")
        front.refusing = False  # the policy now allows it
        asyncio.run(poller.poll(20.0))
        assert (status.state, status.instances_in_service, status.reason) == ("confirmed", 2, None)
        # A confirmed endpoint keeps its last answer when access goes away again.
        front.refusing = True
        asyncio.run(poller.poll(40.0))
        assert (status.state, status.status, status.instances_in_service, status.polled_at) == \
            ("confirmed", "InService", 2, 20.0)
        assert "AccessDeniedException" in status.last_error
    finally:
        front.close()


@pytest.mark.parametrize("error, reason", [
    (NoCredentialsError(), "no AWS credentials"),
    (ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "DescribeEndpoint"),
     "not authorized to DescribeEndpoint"),
    (ClientError({"Error": {"Code": "UnrecognizedClientException", "Message": "The security token included in the "
                            "request is invalid."}}, "DescribeEndpoint"), "AWS credentials rejected"),
    (ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "DescribeEndpoint"),
     "DescribeEndpoint throttled"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9/"), "control plane unreachable"),
])
def test_unconfirmed_reason_names_what_to_fix(error, reason):
    assert unconfirmed_reason(error) == reason


class ErrorFront:
    """A real HTTP server in front of moto that answers as AWS does when refusing a call.

    While ``refusing`` is set every call gets AWS's JSON-protocol error (HTTP 400,
    ``__type: <code>``, ThrottlingException by default); otherwise requests are forwarded
    to moto as sent.
    """

    def __init__(self, upstream: str, code: str = "ThrottlingException", message: str = "Rate exceeded"):
        import http.server
        import json
        import threading
        import urllib.request

        front = self
        self.refusing = True

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if front.refusing:
                    payload = json.dumps({"__type": code, "message": message}).encode()
                    status, headers = 400, {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.1"}
                else:
                    req = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                                 headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                    with urllib.request.urlopen(req) as r:
                        payload, status = r.read(), r.status
                        headers = {"Content-Type": r.headers.get("Content-Type", "application/x-amz-json-1.1")}
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_throttling_keeps_last_known_state_then_recovers(aws, moto_url):
    from botocore.config import Config

    endpoint = make_endpoint(aws, instances=3)
    front = ErrorFront(moto_url)
    try:
        client = boto3.client("sagemaker", region_name=REGION, endpoint_url=front.url,
                              config=Config(retries={"mode": "standard", "max_attempts": 1}))
        status = EndpointStatus("sm", status="InService", instances_in_service=2, desired_instances=2, polled_at=1.0)
        poller = EndpointPoller(backend_cfg(endpoint), status, lambda: client)
        asyncio.run(poller.poll(20.0))
        assert status.last_error == "DescribeEndpoint: ThrottlingException: Rate exceeded"
        assert (status.status, status.instances_in_service, status.polled_at) == ("InService", 2, 1.0)
        front.refusing = False
        asyncio.run(poller.poll(40.0))
        assert status.last_error is None and status.instances_in_service == 3 and status.polled_at == 40.0
    finally:
        front.close()


def actuate(cfg, dry_run, steps, cooldown_s=300.0, client=None):
    """Poll, then apply each (target, now) in turn; returns the results and the status.

    With ``client``, both use it instead of building their own from the environment (faster).
    """
    factory = (lambda: client) if client is not None else None

    async def run():
        status = await polled(cfg, client_factory=factory)
        actuator = CapacityActuator(cfg, status, dry_run=dry_run, cooldown_s=cooldown_s, client_factory=factory)
        return [await actuator.apply(target, "test", now) for target, now in steps], status
    return asyncio.run(run())


def test_dry_run_recommends_and_changes_nothing(aws):
    endpoint = make_endpoint(aws, instances=2)
    [result], status = actuate(backend_cfg(endpoint), True, [(3, 10.0)])
    assert (result.action, result.target, result.current, result.dry_run) == ("would_update", 3, 2, True)
    assert current_count(aws, endpoint) == 2 and status.desired_instances == 2


def test_live_update_changes_instance_count(aws):
    endpoint = make_endpoint(aws, instances=2)
    cfg = backend_cfg(endpoint)
    [result], status = actuate(cfg, False, [(3, 10.0)])
    assert (result.action, result.target, result.current) == ("updated", 3, 2)
    assert (status.status, status.desired_instances) == ("Updating", 3)  # until the next poll
    assert current_count(aws, endpoint) == 3
    after = asyncio.run(polled(cfg))
    assert (after.status, after.instances_in_service, after.desired_instances) == ("InService", 3, 3)


def test_target_already_met_is_no_action(aws):
    endpoint = make_endpoint(aws, instances=2)
    [result], _ = actuate(backend_cfg(endpoint), False, [(2, 10.0)])
    assert result.action == "none" and current_count(aws, endpoint) == 2


@pytest.mark.parametrize("minimum, maximum, asked, expected", [(0, 4, 9, 4), (1, 4, 0, 1), (0, 4, 0, 0), (2, 4, -3, 2)])
def test_target_is_clamped_to_min_and_max(aws, minimum, maximum, asked, expected):
    endpoint = make_endpoint(aws, instances=3)
    [result], _ = actuate(backend_cfg(endpoint, minimum, maximum), False, [(asked, 10.0)], client=aws)
    assert (result.requested, result.target, result.action) == (asked, expected, "updated")
    # moto accepts 0 for any endpoint; real SageMaker only with managed instance scaling.
    assert current_count(aws, endpoint) == expected


def test_no_change_within_cooldown(aws):
    endpoint = make_endpoint(aws, instances=2)
    cfg = backend_cfg(endpoint)

    async def run():
        status = EndpointStatus("sm")
        poller = EndpointPoller(cfg, status, interval_s=15)
        actuator = CapacityActuator(cfg, status, dry_run=False, cooldown_s=300.0)
        await poller.poll(0.0)
        results = [await actuator.apply(3, "busy", 10.0), await actuator.apply(1, "idle", 11.0)]
        await poller.poll(20.0)  # moto finishes at once: InService again, 3 instances
        results += [await actuator.apply(1, "idle", now) for now in (200.0, 310.0)]
        return results

    updated, while_updating, in_cooldown, after = asyncio.run(run())
    assert updated.action == "updated" and while_updating.action == "held" and "Updating" in while_updating.reason
    assert in_cooldown.action == "held" and "cooldown" in in_cooldown.reason and in_cooldown.current == 3
    assert (after.action, after.current, after.target) == ("updated", 3, 1)
    assert current_count(aws, endpoint) == 1


def test_no_change_while_updating(aws):
    endpoint = make_endpoint(aws, instances=2)
    moto_endpoint = get_backend("sagemaker")[ACCOUNT][REGION].endpoints[endpoint]
    moto_endpoint.endpoint_status = "Updating"  # what real SageMaker reports for minutes
    cfg = backend_cfg(endpoint)
    for dry_run in (False, True):
        [result], status = actuate(cfg, dry_run, [(3, 10.0)])
        assert status.status == "Updating" and status.healthy
        assert result.action == "held" and "Updating" in result.reason
    assert current_count(aws, endpoint) == 2


def test_no_change_before_first_poll(aws):
    endpoint = make_endpoint(aws, instances=2)
    status = EndpointStatus.initial("sm", assumed_instances=2)  # "Assumed": not InService
    result = asyncio.run(CapacityActuator(backend_cfg(endpoint), status, dry_run=False).apply(3, "test", 10.0))
    assert result.action == "held" and current_count(aws, endpoint) == 2


def test_rejected_update_surfaces_as_last_error_and_is_not_retried_every_tick(aws):
    endpoint = make_endpoint(aws, instances=2)
    # A variant the endpoint lacks: moto answers ValidationException, as AWS does for a 0 it cannot honour.
    cfg = backend_cfg(endpoint, variant="Blue")
    status = EndpointStatus("sm", status="InService", instances_in_service=2, desired_instances=2)
    actuator = CapacityActuator(cfg, status, dry_run=False)

    async def run():
        return [await actuator.apply(0, "idle", now) for now in (10.0, 11.0)]

    failed, held = asyncio.run(run())
    assert failed.action == "failed" and "ValidationException" in failed.reason
    assert status.last_error.startswith("UpdateEndpointWeightsAndCapacities: ValidationException")
    assert (status.status, status.desired_instances) == ("InService", 2)
    assert held.action == "held" and "cooldown" in held.reason
    assert current_count(aws, endpoint) == 2


def test_cut_down_model_matches_botocores_for_the_calls_made():
    """gateway/aws_models is botocore's SageMaker model restricted to the calls made (scripts/trim_aws_model.py)."""
    import json
    import os

    import botocore.loaders

    from gateway.endpoint.control import AWS_MODELS_DIR

    loader = botocore.loaders.Loader()
    version = loader.determine_latest_version("sagemaker", "service-2")
    full = loader.load_service_model("sagemaker", "service-2", version)
    with open(os.path.join(AWS_MODELS_DIR, "sagemaker", version, "service-2.json")) as f:
        cut = json.load(f)
    assert set(cut["operations"]) == {"DescribeEndpoint", "UpdateEndpointWeightsAndCapacities",
                                      "DescribeInferenceComponent", "UpdateInferenceComponentRuntimeConfig"}
    strip = lambda v: {k: strip(x) for k, x in v.items() if k != "documentation"} if isinstance(v, dict) else v  # noqa: E731
    for name, shape in cut["shapes"].items():
        assert strip(full["shapes"][name]) == shape, f"{name} differs: rerun scripts/trim_aws_model.py"
    assert cut["metadata"] == strip(full["metadata"])


def test_cut_down_endpoints_keep_every_partition_and_resolve_as_botocores(monkeypatch):
    """gateway/aws_models/endpoints.json is botocore's with only the services these clients and the
    credential chain use; a control client built on it resolves the same URL in every partition."""
    import json
    import os

    import botocore.loaders
    import botocore.session

    from gateway.endpoint.control import AWS_MODELS_DIR, sagemaker_client

    full = botocore.loaders.Loader().load_data("endpoints")
    with open(os.path.join(AWS_MODELS_DIR, "endpoints.json")) as f:
        cut = json.load(f)
    assert [p["partition"] for p in cut["partitions"]] == [p["partition"] for p in full["partitions"]]
    for whole, part in zip(full["partitions"], cut["partitions"]):
        assert {k: v for k, v in part.items() if k != "services"} == {
            k: v for k, v in whole.items() if k != "services"}, "rerun scripts/trim_aws_model.py"
        assert "api.sagemaker" in part["services"] or "api.sagemaker" not in whole["services"]
        for name, service in part["services"].items():
            assert whole["services"][name] == service, f"{name} differs: rerun scripts/trim_aws_model.py"

    monkeypatch.delenv("AWS_ENDPOINT_URL_SAGEMAKER", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    reference = botocore.session.get_session()
    for region in ("us-east-1", "eu-west-3", "ap-southeast-2", "cn-north-1", "us-gov-west-1"):
        ours = sagemaker_client(region).meta.endpoint_url
        theirs = reference.create_client("sagemaker", region_name=region).meta.endpoint_url
        assert ours == theirs, region
