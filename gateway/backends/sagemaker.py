"""A SageMaker real-time endpoint serving an OpenAI-messages container (pay per instance-hour).

The request path is the real AWS one, without boto3's blocking client: botocore
resolves the credential chain once, the endpoint URL honours
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``, each request is SigV4-signed by botocore's signer and
sent on the same pooled aiohttp session as the API backend, and streams are
decoded with botocore's own event-stream parser. With ``inference_component_name`` every
invocation names the component in ``X-Amzn-SageMaker-Inference-Component`` (signed like the
rest); a component scaled to zero copies answers at once, and that answer becomes
``EndpointNotInService`` so the request goes to the API instead of failing. litellm's
``sagemaker_chat`` provider was not used: it ignores the endpoint override and leaks its URL
override into the request body.
"""
from __future__ import annotations

import asyncio
import os
from typing import ClassVar
from urllib.parse import quote

from routing_policies import ENDPOINT

from ..http.limits import off_loop
from .base import UpstreamReply, UpstreamUnavailable, register
from .http_pool import HttpPool
from .sagemaker_codec import codec_for

COMPONENT_HEADER = "X-Amzn-SageMaker-Inference-Component"
# InvokeEndpoint's 400 ValidationError for a component with no copy starts with this
_NO_CAPACITY = b"has no capacity to process this request"


class EndpointNotInService(UpstreamUnavailable):
    """The endpoint answered that nothing serves there now (component at 0 copies): try elsewhere."""

    reason = "endpoint_not_in_service"


def runtime_endpoint_url(region: str, configured: str | None, env=os.environ) -> str:
    """Where InvokeEndpoint goes, in the order the AWS SDKs use.

    Config ``endpoint_url``, then ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``, then the
    global ``AWS_ENDPOINT_URL`` (both ignored under
    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``), then the regional default. Resolved
    here rather than by building a botocore client: the client's service model and
    endpoint rules cost ~7 MB per process for one string. Not covered: per-service
    ``endpoint_url`` in ``~/.aws/config`` and FIPS/dual-stack variants (set
    ``endpoint_url`` in the gateway config for those).
    """
    if configured:
        return configured.rstrip("/")
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        for var in ("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_ENDPOINT_URL"):
            if env.get(var):
                return env[var].rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://runtime.sagemaker.{region}.{suffix}"


class SigV4Signer:
    """Signs requests for service ``sagemaker`` with the standard AWS credential chain."""

    def __init__(self, region: str):
        import botocore.session
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        self.region = region
        self._credentials = botocore.session.get_session().get_credentials()
        self._auth_cls, self._request_cls = SigV4Auth, AWSRequest

    def sign(self, url: str, body: bytes, headers: dict) -> dict:
        if self._credentials is None:
            raise UpstreamUnavailable("no AWS credentials found in the standard chain")
        request = self._request_cls(method="POST", url=url, data=body, headers=headers)
        self._auth_cls(self._credentials.get_frozen_credentials(), "sagemaker", self.region).add_auth(request)
        return dict(request.headers.items())


@register
class SageMakerBackend:
    type_name: ClassVar[str] = "sagemaker"
    kind = ENDPOINT

    def __init__(self, cfg):
        self.name = cfg.name
        self.cfg = cfg
        self._pool = HttpPool(cfg.max_connections, cfg.timeout_s)
        self._codec = codec_for(cfg.wire_format)
        self._signer: SigV4Signer | None = None
        self._signer_ready: asyncio.Future | None = None

    async def start(self) -> None:
        # botocore's import and credential chain take ~0.3 s: done in a thread while the
        # gateway already serves; the first endpoint request waits for it if it must.
        self._signer_ready = asyncio.ensure_future(asyncio.to_thread(SigV4Signer, self.cfg.region))
        endpoint_url = runtime_endpoint_url(self.cfg.region, self.cfg.endpoint_url)
        base = f"{endpoint_url}/endpoints/{quote(self.cfg.endpoint_name, safe='')}"
        self._url = f"{base}/invocations"
        self._stream_url = f"{base}/invocations-response-stream"
        await self._pool.start()

    async def close(self) -> None:
        await self._pool.close()

    async def chat(self, body: bytes, stream: bool) -> UpstreamReply:
        if self._signer is None:
            if self._signer_ready is None:
                await self.start()
            try:
                self._signer = await self._signer_ready
            except Exception as e:  # noqa: BLE001 — a broken AWS config is the endpoint's failure, not a crash
                self._signer_ready = None  # try again on the next request
                raise UpstreamUnavailable(f"AWS signing unavailable ({type(e).__name__})") from None
        # a large body is parsed by a codec (tgi) and hashed by SigV4: off the loop (see http.limits)
        payload = await off_loop(len(body), self._codec.encode_request, body)
        url = self._stream_url if stream else self._url
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if stream:
            headers["X-Amzn-SageMaker-Accept"] = "application/json"
        if self.cfg.inference_component_name:
            headers[COMPONENT_HEADER] = self.cfg.inference_component_name
        signed = await off_loop(len(payload), self._signer.sign, url, payload, headers)
        reply = await self._pool.post(url, payload, signed, stream)
        if reply.status == 400 and _NO_CAPACITY in (reply.body or b""):
            raise EndpointNotInService(f"SageMaker inference component {self.cfg.inference_component_name} has "
                                       "no copy running (scaled to zero or scaling up)")
        if reply.status >= 300:
            return UpstreamReply(*self._codec.error_reply(reply.status, reply.body))
        if not stream:
            return UpstreamReply(reply.status, await off_loop(len(body) + len(reply.body), self._codec.decode_response,
                                                              reply.body, body))
        return UpstreamReply(reply.status, chunks=self._codec.decode_stream(reply.chunks, body), close=reply.close)

    async def completions(self, body: bytes, stream: bool) -> UpstreamReply:
        """Legacy completions: the codec tells the two request shapes apart (``prompt``)."""
        return await self.chat(body, stream)

    async def embeddings(self, body: bytes) -> UpstreamReply:
        raise NotImplementedError("embeddings are served by API backends only (config validation ensures it)")
