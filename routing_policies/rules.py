"""Small per-request rules that several policies share (pure functions)."""
from __future__ import annotations

from .admission import has_room
from .base import API, ENDPOINT, BackendView, Decision, RequestContext


def fits_context(view: BackendView, prompt_tokens: int, max_tokens: int | None) -> bool:
    """An endpoint with a context window can only take prompt + requested output."""
    if view.context_window is None:
        return True
    return prompt_tokens + (max_tokens or 0) <= view.context_window


def in_service(view: BackendView) -> bool:
    return view.kind != ENDPOINT or view.instances_in_service > 0


def has_headroom(view: BackendView) -> bool:
    """Backlog below what it finishes in ``queue_s`` (past that it only queues and times out)."""
    if view.kind != ENDPOINT:
        return True
    return has_room(view.backlog_tokens, view.instances_in_service, view.capacity_tps, view.queue_s)


def first_usable(ctx: RequestContext, kind: str | None = None) -> BackendView | None:
    for view in ctx.candidates:
        if (kind is None or view.kind == kind) and view.healthy:
            return view
    return None


def endpoint_verdict(ctx: RequestContext) -> tuple[BackendView | None, str]:
    """The first endpoint that can take this request now, or why none can.

    The reasons are stable strings: they end up in headers, logs and a metric label.
    """
    reason = "no_endpoint"
    for view in ctx.candidates:
        if view.kind != ENDPOINT:
            continue
        if not view.healthy:
            reason = "endpoint_unhealthy"
        elif not fits_context(view, ctx.prompt_tokens, ctx.max_tokens):
            # a bound above the window proves nothing; only being out of service is known
            reason = "endpoint_not_in_service" if ctx.prompt_tokens_is_bound and not in_service(view) \
                else "context_too_long"
        elif not in_service(view):
            reason = "endpoint_not_in_service"
        elif not has_headroom(view):
            reason = "endpoint_at_capacity"
        else:
            return view, "endpoint_in_service"
    return None, reason


def fallback_to_api(ctx: RequestContext, reason: str) -> Decision:
    api = first_usable(ctx, API)
    if api is not None:
        return Decision(api.name, reason)
    any_view = first_usable(ctx) or ctx.candidates[0]
    return Decision(any_view.name, "no_healthy_api")


def endpoint_first(ctx: RequestContext) -> Decision:
    """The endpoint when it can take the request (in service, room, context fit), else the API."""
    view, reason = endpoint_verdict(ctx)
    if view is not None:
        return Decision(view.name, reason)
    return fallback_to_api(ctx, reason)
