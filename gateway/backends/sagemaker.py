"""A SageMaker real-time endpoint serving an OpenAI-messages container (pay per instance-hour).

The request path is the real AWS one, without boto3's blocking client: botocore
resolves the endpoint URL (honouring ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``) and
the credential chain once, each request is SigV4-signed by botocore's signer and
sent on the same pooled aiohttp session as the API backend, and streams are
decoded with botocore's own event-stream parser. litellm's ``sagemaker_chat``
provider was not used: it ignores the endpoint override and leaks its URL
override into the request body.
"""
from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from routing_policies import ENDPOINT

from .base import UpstreamReply, UpstreamUnavailable, register
from .http_pool import HttpPool
from .sagemaker_codec import codec_for


class SigV4Signer:
    """Signs requests for service ``sagemaker`` with the standard AWS credential chain."""

    def __init__(self, region: str, endpoint_url: str | None):
        import botocore.session
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        session = botocore.session.get_session()
        client = session.create_client("sagemaker-runtime", region_name=region, endpoint_url=endpoint_url)
        self.endpoint_url = client.meta.endpoint_url.rstrip("/")
        self.region = region
        self._credentials = session.get_credentials()
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

    async def start(self) -> None:
        self._signer = SigV4Signer(self.cfg.region, self.cfg.endpoint_url)
        base = f"{self._signer.endpoint_url}/endpoints/{quote(self.cfg.endpoint_name, safe='')}"
        self._url = f"{base}/invocations"
        self._stream_url = f"{base}/invocations-response-stream"
        await self._pool.start()

    async def close(self) -> None:
        await self._pool.close()

    async def chat(self, body: bytes, stream: bool) -> UpstreamReply:
        if self._signer is None:
            await self.start()
        payload = self._codec.encode_request(body)
        url = self._stream_url if stream else self._url
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if stream:
            headers["X-Amzn-SageMaker-Accept"] = "application/json"
        reply = await self._pool.post(url, payload, self._signer.sign(url, payload, headers), stream)
        if reply.status >= 300:
            return UpstreamReply(reply.status, self._codec.error_body(reply.status, reply.body))
        if not stream:
            return UpstreamReply(reply.status, self._codec.decode_response(reply.body, body))
        return UpstreamReply(reply.status, chunks=self._codec.decode_stream(reply.chunks, body), close=reply.close)

    async def embeddings(self, body: bytes) -> UpstreamReply:
        raise NotImplementedError("embeddings are served by API backends only (config validation ensures it)")
