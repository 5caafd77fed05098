"""What the demo shows while it runs: a live rich panel on a terminal, plain lines elsewhere.

Every figure comes from the gateway's own ``/status.json`` (the status page's document) and
from the answers the driver got; the view computes nothing of its own but the progress.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


def hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def usd(value) -> str:
    v = float(value or 0)
    return f"${v:,.4f}" if abs(v) < 1 else f"${v:,.2f}"


@dataclass
class Frame:
    """One refresh: the status document plus the driver's and control plane's view."""

    doc: dict | None
    sim_elapsed_s: float
    sim_total_s: float
    driver_backends: dict  # TrafficDriver.by_backend()
    recent: list  # the last Outcomes
    changes: list  # control-plane resizes: {"at_s", "from", "to"}
    behind_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _endpoint(doc: dict) -> tuple[str, dict] | tuple[None, None]:
    eps = (doc or {}).get("endpoints") or {}
    name = next(iter(eps), None)
    return (name, eps[name]) if name else (None, None)


def _break_even(ep: dict | None) -> str:
    be = (ep or {}).get("break_even_requests_per_hour")
    if be is not None:
        return f"{be:,.0f} req/h"
    return "never" if (ep or {}).get("recommendation_reason") == "endpoint_never_pays_off" else "not decided yet"


def plain_line(f: Frame) -> str:
    doc = f.doc or {}
    name, ep = _endpoint(doc)
    parts = [f"[{hms(f.sim_elapsed_s)} of {hms(f.sim_total_s)} simulated]",
             f"volume {float((ep or {}).get('expected_requests_per_hour') or 0):,.0f} req/h",
             f"break-even {_break_even(ep)}"]
    if ep:
        parts.append(f"{name} {ep['instances_in_service']} in service, {ep.get('recommended_instances')} recommended")
    for backend, row in (doc.get("backends") or {}).items():
        n = f.driver_backends.get(backend, {}).get("requests", 0)
        parts.append(f"{backend} {n} req {usd(row['spend_usd'])}")
    spend = doc.get("spend") or {}
    parts.append(f"saved {usd(spend.get('saved_usd'))} of {usd(spend.get('api_only_usd'))}")
    return " · ".join(parts)


def render(f: Frame, header: str):
    doc = f.doc or {}
    name, ep = _endpoint(doc)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    if ep:
        expected = float(ep.get("expected_requests_per_hour") or 0)
        be = ep.get("break_even_requests_per_hour")
        if be is None and ep.get("recommendation_reason") != "endpoint_never_pays_off":
            verdict = Text("no capacity decision yet", style="dim")
        elif be is None:
            verdict = Text("the endpoint never pays off at these prices", style="red")
        elif expected >= be:
            verdict = Text("above break-even: the endpoint pays off", style="green")
        else:
            verdict = Text("below break-even: the API is cheaper", style="yellow")
        grid.add_row("volume", Text.assemble(f"{expected:,.0f} req/h forecast  ·  break-even ",
                                             (_break_even(ep), "bold red"), "  ·  ", verdict))
        act = ep.get("last_actuation") or {}
        last = f"  ·  last change: {act['action']} {act['current']}→{act['target']}" \
            if act and act.get("action") not in (None, "none") else ""
        grid.add_row("endpoint", Text.assemble(
            (f"{ep['instances_in_service']} in service", "bold"), f" ({name}, {ep['status']})  ·  "
            f"{ep.get('recommended_instances')} recommended ({ep.get('recommendation_reason') or 'no decision yet'})",
            last))
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("backend", "requests", "spend (ledger)", "Σ x-gateway-cost-usd"):
        table.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    routing = []
    for backend, row in (doc.get("backends") or {}).items():
        d = f.driver_backends.get(backend, {})
        table.add_row(backend, f"{d.get('requests', 0):,}", usd(row["spend_usd"]), usd(d.get("cost_usd", 0)))
        top = sorted((d.get("reasons") or {}).items(), key=lambda kv: -kv[1])[:3]
        if top:
            routing.append(f"{backend}: " + ", ".join(f"{r} {n}" for r, n in top))
    grid.add_row("requests", table)
    if routing:
        grid.add_row("why", "\n".join(routing))
    spend = doc.get("spend") or {}
    api_only = float(spend.get("api_only_usd") or 0)
    saved = float(spend.get("saved_usd") or 0)
    pct = f" ({saved / api_only:.0%})" if api_only else ""
    grid.add_row("savings", Text.assemble((usd(saved) + pct, "bold green" if saved >= 0 else "bold red"),
                                          f" against the API alone ({usd(api_only)}); spent {usd(spend.get('actual_usd'))}"))
    if f.changes:
        grid.add_row("capacity", "  ".join(f"{hms(c['at_s'])} {c['from']}→{c['to']}" for c in f.changes[-6:]))
    if f.recent:
        o = f.recent[-1]
        grid.add_row("last request", Text(f"{o.backend or '-'} ({o.reason}), {o.prompt_tokens:,} + "
                                          f"{o.completion_tokens:,} tokens, {usd(o.cost_usd)}", no_wrap=True,
                                          overflow="ellipsis"))
    for note in f.notes:
        grid.add_row("", Text(note, style="yellow"))
    bar = ProgressBar(total=f.sim_total_s, completed=min(f.sim_elapsed_s, f.sim_total_s), width=50)
    progress = Table.grid(padding=(0, 1))
    progress.add_row(bar, f"{hms(f.sim_elapsed_s)} of {hms(f.sim_total_s)} simulated")
    return Panel(Group(progress, grid), title=header, title_align="left")


def make_console(file=None) -> Console:
    return Console(file=file, highlight=False, soft_wrap=True)
