"""The Prometheus and OpenTelemetry exporters name, type and fill the pool metrics as the conventions say."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from poolwarden import ConfigError, PoolTimeout, Warden
from poolwarden.observe import otel, prometheus
from poolwarden.observe.stats import BOUNDS
from poolwarden.testing import FakeConnector

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: The connection-pool metrics of the OpenTelemetry database-client semantic conventions:
#: (name, instrument, unit, attributes), as listed in docs/database/database-metrics.md.
CONVENTIONS: list[tuple[str, str, str, frozenset[str]]] = [
    ("db.client.connection.count", "updowncounter", "{connection}", frozenset({POOL, STATE})),
    ("db.client.connection.idle.max", "updowncounter", "{connection}", frozenset({POOL})),
    ("db.client.connection.idle.min", "updowncounter", "{connection}", frozenset({POOL})),
    ("db.client.connection.max", "updowncounter", "{connection}", frozenset({POOL})),
    ("db.client.connection.pending_requests", "updowncounter", "{request}", frozenset({POOL})),
    ("db.client.connection.timeouts", "counter", "{timeout}", frozenset({POOL})),
    ("db.client.connection.create_time", "histogram", "s", frozenset({POOL})),
    ("db.client.connection.wait_time", "histogram", "s", frozenset({POOL})),
    ("db.client.connection.use_time", "histogram", "s", frozenset({POOL})),
]

_PROM_TYPE = {"updowncounter": "gauge", "counter": "counter", "histogram": "histogram"}
_PROM_UNIT = {"s": "seconds"}


def prometheus_name(name: str, unit: str) -> str:
    """OpenTelemetry's Prometheus mapping: dots to underscores, {annotations} dropped, units spelled out
    as a suffix (the counter's ``_total`` goes on its sample, as the parser reports it)."""
    out = name.replace(".", "_")
    if not unit.startswith("{"):
        out += "_" + _PROM_UNIT[unit]
    return out


def test_the_mapping_gives_the_expected_prometheus_names() -> None:
    """The name mapping used below yields the names the brief and the compatibility spec give."""
    assert [prometheus_name(n, u) for n, _, u, _ in CONVENTIONS] == [
        "db_client_connection_count", "db_client_connection_idle_max", "db_client_connection_idle_min",
        "db_client_connection_max", "db_client_connection_pending_requests", "db_client_connection_timeouts",
        "db_client_connection_create_time_seconds", "db_client_connection_wait_time_seconds",
        "db_client_connection_use_time_seconds",
    ]


# -- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


class Scrape:
    """One parsed exposition, with lookups by sample name and labels."""

    def __init__(self, body: bytes) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def samples(self, name: str) -> list[Sample]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, pool: str, **labels: str) -> float:
        want = {"db_client_connection_pool_name": pool,
                **{f"db_client_connection_{k}" if k == "state" else k: v for k, v in labels.items()}}
        found = [s.value for s in self.samples(name) if s.labels == want]
        assert len(found) == 1, f"{name}{want}: {found} in {self.samples(name)}"
        return found[0]


def scrape(warden: Warden) -> Scrape:
    body, content_type = prometheus.render(warden)
    assert content_type.startswith("text/plain")
    return Scrape(body)


def fake_warden(name: str = "db", **settings: Any) -> Warden:
    warden = Warden(environ={})
    settings.setdefault("check_after_idle", None)
    settings.setdefault("drain_timeout", 1.0)
    warden.pool(name, connector=FakeConnector(), **settings)
    return warden


@pytest.fixture
async def warden() -> AsyncIterator[Warden]:
    g = fake_warden(min_size=1, max_size=2, acquire_timeout=0.05)
    async with g:
        yield g


# -- Prometheus, one process ------------------------------------------------------------------------


async def test_prometheus_names_types_units_and_labels(warden: Warden) -> None:
    """Every conventional metric is exported once, with its Prometheus type, unit suffix and labels."""
    families = scrape(warden).families
    ours = {name: f for name, f in families.items() if name.startswith("db_client_")}
    expected = {prometheus_name(n, u): (kind, attrs) for n, kind, u, attrs in CONVENTIONS}
    assert set(ours) == set(expected)
    for name, (kind, attrs) in expected.items():
        family = ours[name]
        assert family.type == _PROM_TYPE[kind], name
        want = {a.replace(".", "_") for a in attrs}
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            assert labels == want, (name, sample)
            if kind == "counter":
                assert sample.name == name + "_total"
            if kind == "histogram":
                assert sample.name in (name + "_bucket", name + "_count", name + "_sum")
    states = {s.labels["db_client_connection_state"] for s in ours["db_client_connection_count"].samples}
    assert states == {"idle", "used"}


async def test_prometheus_histograms_use_the_advised_buckets(warden: Warden) -> None:
    """The three histograms have BOUNDS as bucket bounds, then +Inf."""
    s = scrape(warden)
    for name in ("create_time", "wait_time", "use_time"):
        les = [x.labels["le"] for x in s.samples(f"db_client_connection_{name}_seconds_bucket")]
        assert [float(le) for le in les] == [*BOUNDS, float("inf")]


async def test_prometheus_values_follow_the_pool() -> None:
    """Acquire, wait, time out and release move the gauges, the counter and the histograms."""
    g = fake_warden("moving", min_size=1, max_size=2, acquire_timeout=0.05)
    async with g:
        pool = g["moving"]
        base = pool.stats()
        s = scrape(g)
        assert s.value("db_client_connection_count", "moving", state="idle") == 1
        assert s.value("db_client_connection_count", "moving", state="used") == 0
        assert s.value("db_client_connection_max", "moving") == 2
        assert s.value("db_client_connection_idle_max", "moving") == 2
        assert s.value("db_client_connection_idle_min", "moving") == 1
        assert s.value("db_client_connection_create_time_seconds_count", "moving") == 1

        a = await pool.acquire()
        b = await pool.acquire()
        async def wait_for_one() -> Any:
            return await pool.acquire(timeout=5)

        waiter = asyncio.create_task(wait_for_one())
        for _ in range(100):  # a few loop turns until the waiter has queued
            if pool.stats().waiting:
                break
            await asyncio.sleep(0)
        s = scrape(g)
        assert s.value("db_client_connection_count", "moving", state="used") == 2
        assert s.value("db_client_connection_count", "moving", state="idle") == 0
        assert s.value("db_client_connection_pending_requests", "moving") == 1
        await pool.release(a)
        c = await waiter
        with pytest.raises(PoolTimeout):
            await pool.acquire()
        await pool.release(b)
        await pool.release(c)

        s = scrape(g)
        assert s.value("db_client_connection_timeouts_total", "moving") == 1
        assert s.value("db_client_connection_pending_requests", "moving") == 0
        assert s.value("db_client_connection_count", "moving", state="used") == 0
        assert s.value("db_client_connection_count", "moving", state="idle") == 2
        assert s.value("db_client_connection_wait_time_seconds_count", "moving") == base.wait_time.count + 3
        assert s.value("db_client_connection_use_time_seconds_count", "moving") == base.use_time.count + 3
        assert s.value("db_client_connection_create_time_seconds_count", "moving") == 2
        waited = pool.stats().wait_time
        assert s.value("db_client_connection_wait_time_seconds_sum", "moving") == pytest.approx(waited.sum)
        inf = [x.value for x in s.samples("db_client_connection_wait_time_seconds_bucket")
               if x.labels["le"] == "+Inf"]
        assert inf == [waited.count]


async def test_prometheus_single_process_costs_nothing_on_the_hot_path(warden: Warden) -> None:
    """Rendering reads the snapshot: no listener is attached to any pool."""
    scrape(warden)
    assert warden["db"]._listeners == []


async def test_render_keeps_the_service_metrics_and_negotiates_openmetrics(warden: Warden) -> None:
    """The default registry's metrics come along, and OpenMetrics is served when asked for, with units."""
    body, content_type = prometheus.render(warden)
    assert b"python_info" in body
    body, content_type = prometheus.render(warden, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert b"# UNIT db_client_connection_wait_time_seconds seconds" in body
    assert body.endswith(b"# EOF\n")


async def test_instrument_registers_a_collector_once_per_registry(warden: Warden) -> None:
    """A registry of one's own shows the pools; a second warden's collector is refused as a duplicate."""
    registry = CollectorRegistry()
    prometheus.instrument(warden, registry=registry)
    families = Scrape(generate_latest(registry)).families
    assert "db_client_connection_count" in families
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        prometheus.instrument(fake_warden(), registry=registry)


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus_client, rendering fails with a ConfigError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"pip install 'poolwarden\[prometheus\]'"):
        prometheus.render(fake_warden())


# -- Prometheus, several processes ------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import asyncio, sys
    from poolwarden import Warden, PoolTimeout
    from poolwarden.observe import prometheus
    from poolwarden.testing import FakeConnector

    async def main() -> None:
        warden = Warden(environ={})
        pool = warden.pool("db", connector=FakeConnector(), min_size=1, max_size=2, acquire_timeout=0.05,
                          check_after_idle=None)
        prometheus.instrument(warden, refresh_interval=0.02, gauge_mode=sys.argv[1])
        async with warden:
            held = await pool.acquire()
            second = await pool.acquire()
            try:
                await pool.acquire()
            except PoolTimeout:
                pass
            await pool.release(second)
            await asyncio.sleep(0.2)  # the timer, not a scrape, writes the gauges
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            await pool.release(held)

    asyncio.run(main())
""")

SCRAPER = textwrap.dedent("""
    import sys
    from poolwarden import Warden
    from poolwarden.observe import prometheus

    body, content_type = prometheus.render(Warden(environ={}))
    sys.stdout.write(body.decode())
""")


@pytest.fixture
def multiproc_env(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


@pytest.fixture
def workers(multiproc_env: dict[str, str]) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _start_worker(env: dict[str, str], mode: str,
                  started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, mode], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _scrape_files(env: dict[str, str]) -> Scrape:
    out = subprocess.run([sys.executable, "-c", SCRAPER], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return Scrape(out.stdout.encode())


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def test_prometheus_multiprocess_sums_the_live_workers(
        multiproc_env: dict[str, str], workers: list[subprocess.Popen[str]]) -> None:
    """Two workers' pools add up in a third process's scrape; a worker that exits stops counting."""
    a = _start_worker(multiproc_env, "livesum", workers)
    b = _start_worker(multiproc_env, "livesum", workers)
    s = _scrape_files(multiproc_env)
    assert s.value("db_client_connection_count", "db", state="used") == 2
    assert s.value("db_client_connection_count", "db", state="idle") == 2
    assert s.value("db_client_connection_max", "db") == 4
    assert s.value("db_client_connection_idle_min", "db") == 2
    assert s.value("db_client_connection_pending_requests", "db") == 0
    assert s.value("db_client_connection_timeouts_total", "db") == 2
    assert s.value("db_client_connection_create_time_seconds_count", "db") == 4
    # per worker: the open-time server_info check, the held lease and the second one
    assert s.value("db_client_connection_wait_time_seconds_count", "db") == 6
    assert s.value("db_client_connection_use_time_seconds_count", "db") == 4
    les = [x.labels["le"] for x in s.samples("db_client_connection_wait_time_seconds_bucket")]
    assert [float(le) for le in les] == [*BOUNDS, float("inf")]
    assert s.families["db_client_connection_timeouts"].type == "counter"
    assert s.families["db_client_connection_count"].type == "gauge"

    _stop(a)
    s = _scrape_files(multiproc_env)
    assert s.value("db_client_connection_count", "db", state="used") == 1
    assert s.value("db_client_connection_max", "db") == 2
    assert s.value("db_client_connection_timeouts_total", "db") == 2  # counters outlive their process
    _stop(b)
    s = _scrape_files(multiproc_env)
    assert s.value("db_client_connection_count", "db", state="used") == 0
    assert s.value("db_client_connection_max", "db") == 0


def test_prometheus_multiprocess_liveall_keeps_one_series_per_worker(
        multiproc_env: dict[str, str], workers: list[subprocess.Popen[str]]) -> None:
    """With gauge_mode="liveall" each worker's gauges carry its pid."""
    proc = _start_worker(multiproc_env, "liveall", workers)
    s = _scrape_files(multiproc_env)
    used = [x for x in s.samples("db_client_connection_count")
            if x.labels["db_client_connection_state"] == "used"]
    assert [(x.labels["pid"], x.value) for x in used] == [(str(proc.pid), 1.0)]
    _stop(proc)


# -- OpenTelemetry ----------------------------------------------------------------------------------


async def test_otel_names_units_types_attributes_and_values() -> None:
    """Each conventional instrument is reported with its unit, kind and attributes, and values move."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Sum

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    g = fake_warden("otel", min_size=1, max_size=2, acquire_timeout=0.05)
    otel.instrument(g, meter_provider=provider)
    otel.instrument(g, meter_provider=provider)  # a second call adds nothing
    try:
        async with g:
            pool = g["otel"]
            held = await pool.acquire()
            async with pool.acquire():
                with pytest.raises(PoolTimeout):
                    await pool.acquire()
                data = reader.get_metrics_data()
            await pool.release(held)
    finally:
        provider.shutdown()

    assert data is not None
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {name for name in metrics if name.startswith("db.client.")} == {name for name, *_ in CONVENTIONS}
    outage: set[tuple[Any, ...]] = set()  # (name, label values but the resource..., value)
    for m in metrics.values():
        for p in cast(Any, m.data).data_points if m.name.startswith("poolwarden.") else ():
            labels = sorted(str(v) for k, v in dict(p.attributes or {}).items() if k != "poolwarden.resource")
            outage.add((m.name, *labels, p.value))
    assert ("poolwarden.circuit.state", "closed", 1) in outage
    assert ("poolwarden.circuit.state", "open", 0) in outage
    assert ("poolwarden.acquires.refused", "timeout", 1) in outage
    assert ("poolwarden.connect_errors", 0) in outage
    for name, kind, unit, attrs in CONVENTIONS:
        metric = metrics[name]
        assert metric.unit == unit, name
        points = list(metric.data.data_points)
        assert points, name
        for point in points:
            assert set(point.attributes or {}) == attrs, name
            assert (point.attributes or {})[POOL] == "otel"
        if kind == "histogram":
            assert isinstance(metric.data, Histogram), name
            assert all(tuple(p.explicit_bounds) == BOUNDS for p in points), name
        else:
            assert isinstance(metric.data, Sum), name
            assert metric.data.is_monotonic == (kind == "counter"), name

    def value(name: str, **attrs: str) -> Any:
        want = {POOL: "otel"}
        if "state" in attrs:
            want[STATE] = attrs["state"]
        found = [p for p in metrics[name].data.data_points if dict(p.attributes or {}) == want]
        assert len(found) == 1, (name, want)
        return found[0]

    assert value("db.client.connection.count", state="used").value == 2
    assert value("db.client.connection.count", state="idle").value == 0
    assert value("db.client.connection.max").value == 2
    assert value("db.client.connection.idle.max").value == 2
    assert value("db.client.connection.idle.min").value == 1
    assert value("db.client.connection.pending_requests").value == 0
    assert value("db.client.connection.timeouts").value == 1
    assert value("db.client.connection.create_time").count == 2
    assert value("db.client.connection.wait_time").count == 3  # the open-time check, held, and the second
    assert value("db.client.connection.use_time").count == 1


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, instrument fails with a ConfigError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigError, match=r"pip install 'poolwarden\[otel\]'"):
        otel.instrument(fake_warden())


# -- honest names for clients, and the operations metrics the alert rules read ------------------------


class FakeClientDriver:
    """A self-pooling client whose driver reports 3 connections in use and 2 idle of 8."""

    def __init__(self, driver: str) -> None:
        self.driver = driver

    async def open(self) -> object:
        return object()

    async def ping(self, client: object) -> None:
        return None

    async def close(self, client: object) -> None:
        return None

    def is_disconnect(self, exc: BaseException) -> bool:
        return False

    def occupancy(self, client: object) -> Any:
        from poolwarden.clients import Occupancy

        return Occupancy(idle=2, in_use=3, max_size=8)


def client_warden() -> Warden:
    g = fake_warden("db", min_size=1, max_size=2)
    g.client("api", factory=FakeClientDriver("httpx"))
    g.client("cache", factory=FakeClientDriver("redis"))
    return g


async def test_http_and_redis_clients_are_not_exported_as_database_pools() -> None:
    """An httpx client is on OpenTelemetry's http_client_open_connections, Redis on redis_client_*,
    and neither appears under a db_client_connection_* name."""
    g = client_warden()
    async with g:
        s = scrape(g)
    pools = {x.labels.get("db_client_connection_pool_name") for f, fam in s.families.items()
             if f.startswith("db_client_") for x in fam.samples}
    assert pools == {"db"}
    http = {(x.labels["http_connection_state"], x.value) for x in s.samples("http_client_open_connections")
            if x.labels["resource"] == "api"}
    assert http == {("active", 3), ("idle", 2)}
    redis = {(x.labels["state"], x.value) for x in s.samples("redis_client_connections")
             if x.labels["resource"] == "cache"}
    assert redis == {("used", 3), ("idle", 2)}
    assert {x.labels["resource"]: x.value for x in s.samples("poolwarden_client_connections_max")} == {
        "api": 8, "cache": 8}


async def test_operations_metrics_follow_circuit_refusals_discards_and_leaks() -> None:
    """poolwarden_* metrics: circuit state one-hot, readiness, refusals and discards by reason, leaks."""
    from poolwarden.observe.events import emit

    g = fake_warden("db", min_size=1, max_size=1, acquire_timeout=0.02)
    async with g:
        pool = g["db"]
        async with pool.acquire():
            with pytest.raises(PoolTimeout):
                await pool.acquire()
        # the first scrape starts counting leak events; earlier tests' "db" pools may have counted some
        before = scrape(g).samples("poolwarden_leaks_suspected_total")[0].value
        emit("leak.suspected", "db", "held too long", route="GET /x")
        s = scrape(g)
    circuit = {x.labels["state"]: x.value for x in s.samples("poolwarden_circuit_state")}
    assert circuit == {"closed": 1, "open": 0, "half_open": 0}
    assert [x.value for x in s.samples("poolwarden_ready")] == [1]
    refused = {x.labels["reason"]: x.value for x in s.samples("poolwarden_acquires_refused_total")}
    assert refused["timeout"] == 1
    assert [x.value - before for x in s.samples("poolwarden_leaks_suspected_total")] == [1]
    assert s.samples("poolwarden_connect_errors_total")[0].value == 0


async def test_the_watchdog_lag_is_exported_when_it_runs() -> None:
    """With Warden(watchdog=...), the loop's lag histogram and the stall counter are scraped."""
    g = Warden(environ={}, watchdog=0.1)
    g.pool("db", connector=FakeConnector(), min_size=1)
    async with g:
        await asyncio.sleep(0.3)
        s = scrape(g)
    assert s.samples("poolwarden_event_loop_lag_seconds_count")[0].value >= 1
    assert s.samples("poolwarden_event_loop_blocked_total")[0].value == 0


async def otel_metrics(g: Warden) -> dict[str, Any]:
    """The metrics an SDK reader collects from ``g``, instrumented, while it is open, by name."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    otel.instrument(g, meter_provider=provider)
    try:
        async with g:
            data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


async def test_otel_reports_clients_on_their_own_names() -> None:
    """OpenTelemetry: http.client.open_connections and redis.client.connections, no db.* for clients."""
    metrics = await otel_metrics(client_warden())
    db_names = {dict(p.attributes or {}).get(POOL) for name, m in metrics.items() if name.startswith("db.")
                for p in m.data.data_points}
    assert db_names == {"db"}
    http = {(p.attributes or {})["http.connection.state"]: p.value
            for p in metrics["http.client.open_connections"].data.data_points}
    assert http == {"active": 3, "idle": 2}
    redis = {(p.attributes or {})["state"]: p.value
             for p in metrics["redis.client.connections"].data.data_points}
    assert redis == {"used": 3, "idle": 2}


async def test_health_tags_an_http_upstream_as_a_system_not_a_datastore() -> None:
    """/readyz's componentType: datastore for a pool and for Redis, system for an HTTP upstream."""
    from poolwarden.observe import health

    g = client_warden()
    async with g:
        _, body = health.readiness(g.stats(), draining=False)
    types = {key: checks[0]["componentType"] for key, checks in body["checks"].items()
             if key.endswith(":connections")}
    assert types == {"db:connections": "datastore", "api:connections": "system",
                     "cache:connections": "datastore"}


async def test_otel_counts_the_watchdog_stalls() -> None:
    """With Warden(watchdog=...), OpenTelemetry gets poolwarden.event_loop.blocked, as Prometheus does."""
    g = Warden(environ={}, watchdog=0.5)
    g.pool("db", connector=FakeConnector(), min_size=1)
    metrics = await otel_metrics(g)
    assert [p.value for p in metrics["poolwarden.event_loop.blocked"].data.data_points] == [0]
