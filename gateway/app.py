"""Builds the gateway from its parts: the one place where everything is wired.

``create_app(config)`` returns a plain ASGI callable. Hot paths are looked up in
a dict by (method, path); nothing is created at import time, so tests build as
many independent apps (each with its own metrics registry) as they like.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from prometheus_client import CollectorRegistry

from routing_policies import build_policy

from .access_log import AccessLog
from .spend.accounting import Accounting, RequestRecord
from .routes.admin import AdminRoutes
from .http.asgi_io import send_bytes
from .backends import build_backend
from .routing.planner import CapacityPlanner, PlanState
from .config import ConfigError, GatewayConfig, load_config
from .endpoint.clock import EndpointClock
from .endpoint.control import CapacityActuator, EndpointPoller, log_unconfirmed
from .endpoint.state import EndpointStatus
from .http.errors import GatewayError
from .routes.health import BackendHealth
from .routing.live import LiveRouting
from .metrics import GatewayMetrics
from .routes.metrics_port import MetricsPort
from .routes.ops import OpsRoutes
from .keys import KeyService
from .proxy import Proxy
from .routes.keys_admin import PREFIX as KEY_ITEM_PREFIX, KeyAdminRoutes
from .status import StatusRoutes
from .state import build_store

log = logging.getLogger("gateway")


class GatewayApp:
    def __init__(self, config: GatewayConfig, registry=None, store=None, access_log=None, clock=time.time):
        self.config = config
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.store = store if store is not None else build_store(config.state)
        self.access_log = access_log if access_log is not None else AccessLog(enabled=config.server.access_log)
        self.backends = {name: build_backend(cfg) for name, cfg in config.backends.items()}
        # Nothing runs until DescribeEndpoint says so, or the config says it cannot ask (assumed_instances).
        self.endpoints = {
            name: EndpointStatus.initial(name, cfg.assumed_instances, "not described yet" if cfg.poll_interval_s > 0
                                         else "never described (poll_interval_s is 0)")
            for name, cfg in config.backends.items() if cfg.type == "sagemaker"
        }
        self._confirmed: set[str] = set()  # endpoints the planner has been re-seeded for
        self.health = BackendHealth()
        policy = build_policy(config.routing.policy, config.routing.params)
        self.live = LiveRouting(config, policy, self.store, self.endpoints, self.health)
        self.accounting = Accounting(config, self.metrics, self.store, self.access_log, self.endpoints, clock)
        self.endpoint_clock = EndpointClock(config, self.store, self.metrics, self.endpoints)
        self.keys = KeyService(config, self.metrics, clock, self.endpoints)
        self.proxy = Proxy(config, self.backends, self.live, self.accounting, self.health, self.keys)
        self.planner = CapacityPlanner(config, policy, self.store, self.endpoints, self.metrics)
        self.pollers = {
            name: EndpointPoller(config.backends[name], status, interval_s=config.backends[name].poll_interval_s)
            for name, status in self.endpoints.items() if config.backends[name].poll_interval_s > 0
        }
        self.actuators = {
            name: CapacityActuator(config.backends[name], status, dry_run=config.routing.dry_run,
                                   cooldown_s=config.backends[name].actuation_cooldown_s)
            for name, status in self.endpoints.items()
        }
        self.last_actuation: dict[str, dict] = {}
        self._control_tasks: set[asyncio.Task] = set()
        ops = OpsRoutes(self)
        admin = AdminRoutes(self)
        key_admin = KeyAdminRoutes(self)
        self.status = StatusRoutes(self)
        self.routes = {
            ("POST", "/v1/chat/completions"): self.proxy.chat,
            ("POST", "/chat/completions"): self.proxy.chat,
            ("POST", "/v1/responses"): self.proxy.responses,
            ("POST", "/responses"): self.proxy.responses,
            ("POST", "/v1/completions"): self.proxy.completions,
            ("POST", "/completions"): self.proxy.completions,
            ("POST", "/v1/embeddings"): self.proxy.embeddings,
            ("POST", "/embeddings"): self.proxy.embeddings,
            ("GET", "/v1/models"): ops.models,
            ("GET", "/models"): ops.models,
            ("GET", "/healthz"): ops.healthz,
            ("GET", "/readyz"): ops.readyz,
            ("GET", "/metrics"): ops.metrics,
            ("GET", "/admin/routing"): admin.routing,
            ("POST", "/admin/reload"): admin.reload,
            ("POST", "/admin/keys"): key_admin.keys_collection,
            ("GET", "/admin/keys"): key_admin.keys_collection,
            ("POST", "/admin/teams"): key_admin.teams,
            ("GET", "/admin/teams"): key_admin.teams,
            ("GET", "/"): self.status.page,
            ("GET", "/status.json"): self.status.data,
        }
        if not config.metrics.on_main_port:
            del self.routes[("GET", "/metrics")]
        where = config.metrics.address()  # read at start: a reload does not move it
        self.metrics_port = MetricsPort(ops.scrape, *where) if where else None
        self._key_item = key_admin.key_item  # /admin/keys/{alias}: GET, PATCH, DELETE
        self._paths = {path for _, path in self.routes}
        self.started = False
        self.in_flight = 0  # requests being handled (shutdown reports those the grace cut off)
        self._ticker: asyncio.Task | None = None
        self._loaded_mtime = self._config_mtime()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is None and scope["path"].startswith(KEY_ITEM_PREFIX):
                handler = self._key_item
            if handler is not None:
                self.in_flight += 1
                try:
                    await handler(scope, receive, send)
                except Exception as e:  # noqa: BLE001 — a bug must still answer in OpenAI's shape
                    # (the proxy's own routes handle theirs with the request's record)
                    log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                    rec = RequestRecord("gw-" + os.urandom(8).hex(), "", scope["path"], time.perf_counter(),
                                        status=500, error=f"internal error ({type(e).__name__})")
                    self.accounting.finish(rec)
                    err = GatewayError(500, "The gateway failed on this request; it is logged.", type="server_error")
                    try:
                        await send_bytes(send, 500, err.body(), [(b"x-request-id", rec.request_id.encode())])
                    except RuntimeError:  # the response had already started: nothing more to say
                        pass
                finally:
                    self.in_flight -= 1
            elif scope["path"] in self._paths:
                await send_bytes(send, 405, GatewayError(405, f"Method {scope['method']} not allowed.").body())
            else:
                await send_bytes(send, 404, GatewayError(404, f"Unknown path {scope['path']}.").body())
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:  # noqa: BLE001 — reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": f"{type(e).__name__}: {e}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        for cfg in self.config.backends.values():
            if cfg.type == "openai" and not cfg.api_key:
                log.warning("backend %s: %s is empty; requests go to %s without a key", cfg.name,
                            cfg.api_key_env, cfg.base_url)
        self.proxy.load_tokenizers()  # ~0.3 s per encoding: at start, not on the first request
        for name, status in self.endpoints.items():
            if name not in self.pollers:  # else the poller says it, once it knows why
                log_unconfirmed(self.config.backends[name], status)
        await self.store.start()
        await self.keys.start()
        for backend in self.backends.values():
            await backend.start()
        if self.metrics_port is not None:
            await self.metrics_port.start()
        await self.tick()
        self._ticker = asyncio.ensure_future(self._tick_forever())
        log.info("gateway ready: pid %d, config %s, policy %s, backends %s, state %s", os.getpid(),
                 self.config.path, self.config.routing.policy, ", ".join(self.backends), self.store.kind)
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_config)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no signals
            pass
        self.started = True

    async def shutdown(self) -> None:
        """After the server stopped accepting and in-flight requests finished (or the grace ran out)."""
        self.started = False
        if self.in_flight:
            log.warning("shutting down with %d request(s) still in flight after server.shutdown_grace_s (%g s): "
                        "they are cut off; what they used so far is recorded", self.in_flight,
                        self.config.server.shutdown_grace_s)
        else:
            log.info("shutting down: no request in flight")
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._control_tasks):
            task.cancel()
        await self.tick()  # the endpoint's last seconds and the last deltas are not lost
        if self.metrics_port is not None:  # after the last tick: a final scrape sees its samples
            await self.metrics_port.close()
        await self.store.close()
        await self.keys.close()
        for backend in self.backends.values():
            await backend.close()
        self.access_log.flush()
        log.warning("shutdown complete: endpoint time and spend flushed to the %s state store, access log flushed",
                    self.store.kind)

    async def tick(self) -> None:
        """Every ``state.flush_interval_s`` (1 s): accrue endpoint time, sync shared state, refresh routing."""
        now = self.clock()
        try:
            await self.endpoint_clock.tick(now)
        except Exception:  # noqa: BLE001 — the clock resumes from the shared marker next tick
            log.exception("endpoint accrual failed")
        try:
            await self.store.sync(now)
        except Exception:  # noqa: BLE001
            log.exception("state sync failed")
        try:
            await self.keys.refresh()
        except Exception:  # noqa: BLE001 — settlements stay buffered and go with the next refresh
            log.exception("key ledger sync failed")
        for name, status in self.endpoints.items():
            if status.confirmed and name not in self._confirmed:
                # The first answer from AWS: plan from it as a fresh process plans from its
                # start (the instances it reports are the current target, kept from now), not
                # from the 0 instances an unconfirmed endpoint was planned with, which would
                # scale a running endpoint down on a restart's empty traffic windows.
                self._confirmed.add(name)
                self.planner.plans[name] = PlanState(status.instances_in_service, None)
        self.live.refresh(now)
        for poller in self.pollers.values():
            if poller.due(now):
                self._in_background(poller.poll(now))  # botocore in a thread, never on this tick's path
        if self.planner.due(now):
            try:
                decisions = self.planner.plan(now)
            except Exception:  # noqa: BLE001 — a policy bug must not stop accrual and sync
                log.exception("capacity planning failed")
                decisions = {}
            for name, decision in decisions.items():
                self._in_background(self._actuate(name, decision, now))
        try:
            await self.status.history.sample(now)
        except Exception:  # noqa: BLE001 — the status page's chart must not stop accrual and sync
            log.exception("status sample failed")
        self._reload_if_changed()
        self.access_log.flush()

    def _in_background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _actuate(self, name: str, decision, now: float) -> None:
        """Acts on the recommendation only when ``routing.dry_run`` is off (the actuator knows)."""
        result = await self.actuators[name].apply(decision.instances, decision.reason, now)
        self.last_actuation[name] = result.as_dict()

    # -- config reload ---------------------------------------------------------
    def _config_mtime(self) -> float | None:
        try:
            return os.stat(self.config.path).st_mtime
        except OSError:
            return None

    def _reload_if_changed(self) -> None:
        mtime = self._config_mtime()
        if mtime is not None and self._loaded_mtime is not None and mtime != self._loaded_mtime:
            self.reload_config()

    def reload_config(self) -> tuple[bool, str]:
        """Re-read the config file; thresholds, prices and keys apply at once.

        Backend connections (types, URLs, endpoint names) need a restart: such a
        file is refused and the running config stays, as for an invalid file.
        """
        self._loaded_mtime = self._config_mtime()
        try:
            new = load_config(self.config.path)
            policy = build_policy(new.routing.policy, new.routing.params)
        except (ConfigError, ValueError, TypeError) as e:
            log.error("config reload rejected, keeping the running config: %s", e)
            return False, f"rejected: {e}"
        changed = [name for name in set(new.backends) | set(self.config.backends)
                   if _connection(new.backends.get(name)) != _connection(self.config.backends.get(name))]
        if changed:
            msg = f"rejected: backend connections changed ({', '.join(sorted(changed))}); restart to apply"
            log.error("config reload %s", msg)
            return False, msg
        self.apply_config(new, policy)
        log.warning("config reloaded from %s (policy %s)", new.path, new.routing.policy)
        return True, "reloaded"

    def apply_config(self, config: GatewayConfig, policy) -> None:
        self.config = config
        for part in (self.live, self.accounting, self.endpoint_clock, self.proxy, self.planner, self.keys):
            part.config = config
        self.accounting.reindex_prices()
        self.proxy.large_bodies.limit = config.server.max_large_bodies
        for name, actuator in self.actuators.items():  # new bounds, cooldown and dry_run apply too
            actuator.cfg = config.backends[name]
            actuator.dry_run = config.routing.dry_run
            actuator.cooldown_s = config.backends[name].actuation_cooldown_s
        for name, poller in self.pollers.items():
            poller.cfg = config.backends[name]
            poller.interval_s = config.backends[name].poll_interval_s or poller.interval_s
        for name, status in self.endpoints.items():
            status.assume(config.backends[name].assumed_instances)  # no-op once DescribeEndpoint answered
        self.live.set_policy(policy)
        self.planner.policy = policy
        self.live.refresh(self.clock())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.state.flush_interval_s)
            await self.tick()


def _connection(backend_cfg):
    """What cannot change without a restart: how a backend is reached."""
    if backend_cfg is None:
        return None
    keep = ("type", "base_url", "api_key_env", "endpoint_name", "region", "endpoint_url", "wire_format",
            "max_connections", "timeout_s")
    return tuple(getattr(backend_cfg, k, None) for k in keep)


def create_app(config: GatewayConfig, **parts) -> GatewayApp:
    return GatewayApp(config, **parts)


def app_from_env() -> GatewayApp:
    """Factory for ``uvicorn --factory`` workers: the config path comes from ``GATEWAY_CONFIG``."""
    # Operational lines (start-up, capacity changes, reloads, outages) on stderr; the access
    # log has stdout to itself.
    logging.basicConfig(level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # botocore says at INFO where it found each client's endpoint: once per control-plane
    # client, which is rebuilt every poll while no credentials are found (DEBUG keeps it).
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("botocore").setLevel(logging.WARNING)
    return create_app(load_config(os.environ.get("GATEWAY_CONFIG", "config.yaml")))
