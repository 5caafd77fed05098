"""SageMaker runtime stand-in: SigV4-verified invocations, AWS event-stream framing for streams.

The "container" behind every endpoint speaks OpenAI messages (TGI/vLLM/LMI) with the same
codec as the OpenAI stand-in, and also TGI's `{"inputs", "parameters"}`. Usage::

    with SageMakerStandIn(endpoints=("my-llm",)) as sm:
        rt = boto3.client("sagemaker-runtime", endpoint_url=sm.base_url, region_name=sm.region,
                          aws_access_key_id=sm.access_key, aws_secret_access_key=sm.secret_key)
        rt.invoke_endpoint(EndpointName="my-llm", Body=json.dumps({"messages": [...]}))

Signatures are recomputed with botocore's own SigV4 signer, so a request the gateway signs
wrongly (service, region, host, body) fails here as it would on AWS.
"""

from __future__ import annotations

import asyncio
import binascii
import datetime
import hashlib
import hmac
import json
import random
import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from . import RecordedRequest, Script
from .openai_server import StandInServer, chat_completion, chat_stream_events, content_chunks, usage_block

_ROUTE = re.compile(r"^/endpoints/([^/]+)/(invocations|invocations-response-stream)$")
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")
_BAD_SIG = ("The request signature we calculated does not match the signature you provided. Check your AWS "
            "Secret Access Key and signing method. Consult the service documentation for details.")
NO_CAPACITY = ("Inference Component has no capacity to process this request. ApplicationAutoScaling may be "
               "in-progress (if configured) or try to increase the capacity by invoking "
               "UpdateInferenceComponentRuntimeConfig API.")  # InvokeEndpoint's 400 for a component at 0 copies
_NEEDS_COMPONENT = ("Inference Component Name header is required for endpoints to which you plan to deploy inference "
                    "components. Please include Inference Component Name header or consider using SageMaker models.")
# AWS error code sent in x-amzn-ErrorType for each scripted HTTP status
_ERROR_TYPES = {400: "ValidationError", 403: "AccessDeniedException", 424: "ModelError",
                429: "ThrottlingException", 500: "InternalFailure", 503: "ServiceUnavailable",
                504: "ModelNotReadyException"}


# ---- AWS event-stream encoding (botocore only ships the decoder) ----

def _es_header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("!B", len(n)) + n + b"\x07" + struct.pack("!H", len(v)) + v  # 7 = string


def es_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total len, headers len, CRC32), headers, payload, CRC32."""
    hdrs = b"".join(_es_header(k, v) for k, v in headers.items())
    prelude = struct.pack("!II", 12 + len(hdrs) + len(payload) + 4, len(hdrs))
    msg = prelude + struct.pack("!I", binascii.crc32(prelude)) + hdrs + payload
    return msg + struct.pack("!I", binascii.crc32(msg))


def payload_part(data: bytes) -> bytes:
    return es_message({":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                       ":message-type": "event"}, data)


def model_stream_error(message: str, error_code: str = "ModelError") -> bytes:
    body = json.dumps({"Message": message, "ErrorCode": error_code}).encode()
    return es_message({":exception-type": "ModelStreamError", ":content-type": "application/json",
                       ":message-type": "exception"}, body)


def _cuts(data: bytes, rng: random.Random | None) -> Iterable[bytes]:
    """Split container bytes at arbitrary positions (mid-JSON, mid-UTF-8) like SageMaker does."""
    if rng is None:
        yield data
        return
    i = 0
    while i < len(data):
        n = rng.randint(1, 48)
        yield data[i:i + n]
        i += n


# ---- the container: OpenAI messages or TGI inputs/parameters ----

def tgi_stream_events(req: Mapping[str, Any], script: Script) -> list[bytes]:
    """TGI `generate_stream` lines: one per token, the last one carrying generated_text and details."""
    chunks = content_chunks(script)
    events = []
    for i, text in enumerate(chunks):
        last = i == len(chunks) - 1
        record = {"index": i + 1, "token": {"id": i + 1, "text": text, "logprob": -0.1, "special": False},
                  "generated_text": "".join(chunks) if last else None,
                  "details": {"finish_reason": "length" if script.finish_reason == "length" else "eos_token",
                              "generated_tokens": usage_block(req, script)["completion_tokens"],
                              "seed": None} if last else None}
        events.append(b"data:" + json.dumps(record).encode() + b"\n\n")
    return events


class SageMakerStandIn(StandInServer):
    """`POST /endpoints/{name}/invocations[-response-stream]` with SigV4 (service `sagemaker`) checked.

    With ``control`` (a SageMakerControlStandIn) its endpoints are served too, and one with managed
    instance scaling answers as SageMaker does: the `X-Amzn-SageMaker-Inference-Component` header is
    required, and a component with no copy gets a 400 ValidationError (NO_CAPACITY) at once.
    Without it the header is only recorded.
    """

    def __init__(self, endpoints: Iterable[str] = ("standin-endpoint",), region: str = "us-east-1",
                 access_key: str = "testing", secret_key: str = "testing", account: str = "123456789012",
                 host: str = "127.0.0.1", control: Any = None):
        super().__init__(host)
        self.endpoints, self.region, self.account = set(endpoints), region, account
        self.access_key, self.secret_key = access_key, secret_key
        self.control = control

    @property
    def base_url(self) -> str:
        return self.url

    def invocations_url(self, endpoint: str, stream: bool = False) -> str:
        return f"{self.url}/endpoints/{endpoint}/invocations{'-response-stream' if stream else ''}"

    def _aws_error(self, conn, req, status: int, error_type: str, body: Mapping[str, Any] | bytes | str,
                   headers: Mapping[str, str] | None = None):
        body = body.encode() if isinstance(body, str) else body
        conn.respond(req, status, body, headers={"x-amzn-RequestId": str(uuid.uuid4()),
                                                 "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/"
                                                 "coral/com.amazon.coral.service/", **(headers or {})})

    def check_signature(self, req: RecordedRequest) -> tuple[str, str] | None:
        """(error type, message) if AWS would reject the request's SigV4 signature, else None."""
        auth = req.headers.get("authorization")
        if not auth:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        m = _AUTH.match(auth)
        if not m:
            return "IncompleteSignatureException", f"Authorization header requires 'Credential', 'Signature' " \
                                                   f"and 'SignedHeaders' in AWS4-HMAC-SHA256 form. Got {auth!r}."
        key, day, region, service, signed, signature = m.groups()
        if key != self.access_key:
            return "UnrecognizedClientException", "The security token included in the request is invalid."
        amz_date = req.headers.get("x-amz-date", "")
        if not amz_date.startswith(day) or "x-amz-date" not in signed.split(";"):
            return "InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from ISO-8601 " \
                                                "version of date from HTTP: X-Amz-Date."
        if region != self.region or service != "sagemaker":
            return "InvalidSignatureException", f"Credential should be scoped to a valid region and to " \
                                                f"service 'sagemaker', not '{region}'/'{service}'."
        try:
            signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return "IncompleteSignatureException", f"Invalid X-Amz-Date: {amz_date!r}"
        now = datetime.datetime.now(datetime.UTC)
        if abs((now - signed_at).total_seconds()) > 300:
            return "InvalidSignatureException", f"Signature expired: {amz_date} is now earlier than " \
                                                f"{(now - datetime.timedelta(minutes=5)):%Y%m%dT%H%M%SZ}."
        body_hash = req.headers.get("x-amz-content-sha256")
        if body_hash not in (None, "UNSIGNED-PAYLOAD") and body_hash != hashlib.sha256(req.body).hexdigest():
            return "InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match " \
                                                "what was computed."
        # Recompute with botocore over exactly the headers the client says it signed.
        headers = {name: req.headers.get(name, "") for name in signed.split(";")}
        url = f"http://{req.headers.get('host', '')}{unquote(req.path)}" + (f"?{req.query}" if req.query else "")
        aws_req = AWSRequest(method=req.method, url=url, headers=headers, data=req.body)
        aws_req.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "sagemaker", self.region)
        expected = signer.signature(signer.string_to_sign(aws_req, signer.canonical_request(aws_req)), aws_req)
        return None if hmac.compare_digest(expected, signature) else ("InvalidSignatureException", _BAD_SIG)

    async def handle(self, req, conn):
        m = _ROUTE.match(req.path)
        if req.method != "POST" or not m:
            return self._aws_error(conn, req, 404, "UnknownOperationException", b"")
        rejected = self.check_signature(req)
        if rejected:
            return self._aws_error(conn, req, 403, rejected[0], {"message": rejected[1]})
        endpoint, stream = unquote(m.group(1)), m.group(2) == "invocations-response-stream"
        if endpoint not in self.endpoints and not (self.control and self.control.knows_endpoint(endpoint)):
            msg = f"Endpoint {endpoint} of account {self.account} not found."
            return self._aws_error(conn, req, 400, "ValidationError", {"message": msg})
        refused = self._component_refusal(endpoint, req.headers.get("x-amzn-sagemaker-inference-component"))
        if refused:
            return self._aws_error(conn, req, 400, "ValidationError", {"message": refused})
        variant = {"x-amzn-RequestId": str(uuid.uuid4()), "x-Amzn-Invoked-Production-Variant": "AllTraffic"}
        if not isinstance(req.json, dict) or not ("messages" in req.json or "inputs" in req.json):
            # the container, not SageMaker, rejects it: AWS wraps that as a 424 ModelError
            return self._model_error(conn, req, 400, "Failed to deserialize the JSON body into the target type")
        script = self.take_script()
        await asyncio.sleep(script.delay)
        if script.error_status is not None:
            error_type = _ERROR_TYPES.get(script.error_status, "ModelError")
            if script.error_status == 424 and script.error_body is None:
                return self._model_error(conn, req, 500, "The container had an error.", script.error_headers)
            body = script.error_body if script.error_body is not None else {"message": f"Scripted {error_type}."}
            return self._aws_error(conn, req, script.error_status, error_type, body, script.error_headers)
        tgi = "inputs" in req.json
        if not stream:
            if script.stop_after_chunks is not None:
                return conn.abort()
            text = "".join(content_chunks(script))
            body = [{"generated_text": text}] if tgi else chat_completion(req.json, script, self.next_id())
            return conn.respond(req, 200, body, headers=variant)
        events = tgi_stream_events(req.json, script) if tgi else chat_stream_events(req.json, script, self.next_id())
        await self._stream(req, conn, script, events, tgi, variant)

    def _component_refusal(self, endpoint: str, component: str | None) -> str | None:
        """SageMaker's message when the endpoint cannot serve this component now, else None.

        Without a control plane nothing is known about components: any named one serves.
        """
        if self.control is None:
            return None
        if component is None:
            return _NEEDS_COMPONENT if self.control.hosts_components(endpoint) else None
        copies = self.control.component_copies(endpoint, component)
        if copies is None:
            return f"Inference Component {component} not found on endpoint {endpoint} of account {self.account}."
        return NO_CAPACITY if copies == 0 else None

    def _model_error(self, conn, req, original_status: int, original_message: str,
                     headers: Mapping[str, str] | None = None):
        log = f"arn:aws:logs:{self.region}:{self.account}:log-group:/aws/sagemaker/Endpoints/standin"
        message = (f"Received {'client' if original_status < 500 else 'server'} error ({original_status}) from "
                   f"primary with message \"{original_message}\". See {log} for more information.")
        self._aws_error(conn, req, 424, "ModelError", {"OriginalStatusCode": original_status, "OriginalMessage":
                                                       original_message, "LogStreamArn": log, "message": message},
                        headers)

    async def _stream(self, req, conn, script: Script, events: list[bytes], tgi: bool, headers):
        rng = None if script.split_seed is None else random.Random(script.split_seed)
        if not script.chunk_delay and script.stop_after_chunks is None and script.stream_error is None:
            # unpaced: cut the whole container output at random points, so parts span SSE events,
            # and cut the framed bytes across HTTP chunks too (botocore must buffer both)
            framed = b"".join(payload_part(p) for p in _cuts(b"".join(events), rng))
            return await conn.send_events(req, "application/vnd.amazon.eventstream", headers, script,
                                          list(_cuts(framed, rng)), range(0), b"")
        content = range(0, len(events)) if tgi else range(1, 1 + len(content_chunks(script)))
        await conn.send_events(req, "application/vnd.amazon.eventstream", headers, script, events, content,
                               model_stream_error(script.stream_error or ""),
                               frame=lambda ev: b"".join(payload_part(p) for p in _cuts(ev, rng)))
