"""The optional Prometheus endpoint (``[metrics] listen``).

Figures are read from the store and the plugins' status sections when Prometheus
scrapes, so they survive restarts and need no hook in every code path; only the reads,
which leave no row in the store, are counted in the process. ``responder status`` shows
the same store figures (``store_figures``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from responder import __version__
from responder.account import AccountStatus
from responder.config import ConfigError, Settings
from responder.gateway import AccountState
from responder.store import DEAD, PENDING, SENDING, StoreBackend

if TYPE_CHECKING:
    from responder.app import App
    from responder.supervision import ReadCounter

PREFIX = "responder"

log = structlog.get_logger("responder.metrics")


@dataclass(frozen=True)
class StoreFigures:
    """What the store knows, as numbers."""

    messages: dict[str, int]
    """Messages by state (received, processed, replied, ignored, failed)."""
    unanswered: dict[str, int]
    """Messages not answered, by who decided: a plugin's name, "no reply", "empty reply"."""
    outbox: dict[str, int]
    """Outgoing SMS by state (pending, sending, sent, dead, uncertain)."""
    sends: dict[tuple[str, str], int]
    """Outgoing SMS that were attempted, by (result, errid): result is "sent", "dead",
    "uncertain" (given up, may have gone out) or "retrying"; errid is the gateway's last
    errid ("" when no answer came)."""
    uncertain: int
    last_read_ok_at: float | None
    last_read_at: float | None
    last_message_at: float | None
    last_sent_at: float | None

    @property
    def outbox_depth(self) -> int:
        return self.outbox.get(PENDING, 0) + self.outbox.get(SENDING, 0)

    @property
    def dead_letters(self) -> int:
        return self.outbox.get(DEAD, 0)


def store_figures(store: StoreBackend) -> StoreFigures:
    status = store.status()
    return StoreFigures(
        messages=status.messages,
        unanswered=status.unanswered,
        outbox=status.outbox,
        sends=status.sends,
        uncertain=status.uncertain_sends,
        last_read_ok_at=status.last_read_ok_at,
        last_read_at=status.last_read_at,
        last_message_at=status.last_message_at,
        last_sent_at=status.last_sent_at,
    )


def _metric_name(text: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in text.lower()).strip("_")


class ResponderCollector:
    """A prometheus-client collector that reads the running app's figures at scrape time."""

    def __init__(self, app: Callable[[], App | None], reads: ReadCounter) -> None:
        self._app = app
        self._reads = reads

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        reads = CounterMetricFamily(
            f"{PREFIX}_reads",
            "readsms calls since the daemon started, by result",
            labels=["result"],
        )
        for result, count in self._reads.snapshot().items():
            reads.add_metric([result], count)
        yield reads
        info = gauge("info", "the running release", ("version",))
        info.add_metric([__version__], 1)
        yield info
        app = self._app()
        up = gauge("store_up", "1 when the store could be read for this scrape")
        try:
            if app is None:
                raise RuntimeError("the daemon is not running")
            figures = store_figures(app.store)
            account = AccountStatus.load(app.store)
            sections = app.status_sections()
        except Exception as err:
            log.warning("metrics_store_failed", error=f"{type(err).__name__}: {err}")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        labelled = (
            ("messages", "messages in the store, by state", ("state",), figures.messages),
            (
                "unanswered_messages",
                "messages that got no reply, by who decided (a plugin, 'no reply', 'empty reply')",
                ("by",),
                figures.unanswered,
            ),
            ("outbox", "outgoing SMS in the store, by state", ("state",), figures.outbox),
            (
                "sends",
                "outgoing SMS attempted, by result (sent, dead, uncertain, retrying)"
                " and the last errid",
                ("result", "errid"),
                figures.sends,
            ),
        )
        for name, doc, labels, counts in labelled:
            family = gauge(name, doc, labels)
            for key, count in sorted(counts.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], count)
            yield family
        for name, doc, value in (
            ("outbox_depth", "SMS waiting to be sent (pending or sending)", figures.outbox_depth),
            ("dead_letters", "SMS given up on", figures.dead_letters),
            ("uncertain_sends", "send attempts whose outcome was unknown", figures.uncertain),
        ):
            family = gauge(name, doc)
            family.add_metric([], value)
            yield family
        for name, doc, moment in (
            ("last_read_success", "when a read last got an answer", figures.last_read_ok_at),
            ("last_message", "when a message was last journaled", figures.last_message_at),
            ("last_sent", "when an SMS was last accepted by the gateway", figures.last_sent_at),
        ):
            if moment is not None:
                family = gauge(f"{name}_timestamp_seconds", f"{doc} (epoch seconds)")
                family.add_metric([], moment)
                yield family
        yield from account_metrics(account, gauge)
        family = gauge(
            "plugin_figure",
            "numeric figures plugins report through responder_status",
            ("section", "figure"),
        )
        for section in sections:
            for figure, shown in section.figures:
                if isinstance(shown, int | float) and not isinstance(shown, bool):
                    family.add_metric([section.title, _metric_name(figure)], shown)
        yield family


def account_metrics(account: AccountStatus, gauge: Callable[..., Any]) -> Iterator[Any]:
    """The account's state (1 for the current one), its balance and the low-balance flag."""
    state = gauge(
        "account_state",
        "1 for the account's current state: ok, login_refused, out_of_credit, suspended",
        ("state",),
    )
    for each in AccountState:
        state.add_metric([each.value], 1 if each is account.state else 0)
    yield state
    if account.balance is not None:
        balance = gauge("balance", "the account's balance (getfee, times gateway.balance_scale)")
        balance.add_metric([], account.balance)
        yield balance
    low = gauge("low_balance", "1 when the balance is under gateway.low_balance")
    low.add_metric([], int(account.low_balance))
    yield low


class MetricsServer:
    """The HTTP endpoint serving ``/metrics`` on its own thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return host, port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics(
    settings: Settings,
    app: Callable[[], App | None],
    reads: ReadCounter,
    *,
    collector: Any = None,
) -> MetricsServer:
    """Serve the metrics on ``settings.metrics.listen``; ConfigError when that cannot be.
    ``collector``: another collector instead of the one account's (several accounts)."""
    listen = settings.metrics.listen
    where = f"{settings.source}: metrics.listen"
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    except ImportError:
        raise ConfigError(
            [
                f"{where}: the metrics endpoint needs prometheus-client, which is not installed:"
                " pip install 'sms-responder[metrics]', or remove [metrics] listen"
            ]
        ) from None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    registry = CollectorRegistry()
    registry.register(collector or ResponderCollector(app, reads))
    ProcessCollector(registry=registry)
    try:
        server, thread = start_http_server(int(port), addr=host, registry=registry)
    except OSError as err:
        raise ConfigError(
            [f"{where}: cannot listen on {listen!r}: {err.strerror or err}"]
        ) from None
    metrics = MetricsServer(server, thread)
    log.info("metrics_listening", address=f"{host}:{metrics.address[1]}")
    return metrics
