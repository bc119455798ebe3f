"""The shipped Prometheus rules and Grafana dashboard: promtool accepts and unit-tests the rules, the
dashboard is what its generator makes and is well formed, and every metric they use is one the exporter
really emits."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from poolwarden import PoolTimeout, Warden
from poolwarden.observe import prometheus
from poolwarden.observe.events import emit
from poolwarden.testing import FakeConnector
from tests.support.tools import ROOT, require_tool
from tests.unit.test_metrics import FakeClientDriver

DEPLOY = Path(str(resources.files("poolwarden.observe").joinpath("deploy")))
LABELS = {"db_client_connection_pool_name", "db_client_connection_state", "http_connection_state"}
PREFIXES = ("db_client_", "poolwarden_", "http_client_", "redis_client_")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("install-promtool", "promtool")


def test_promtool_accepts_the_rules(promtool: str) -> None:
    """promtool check rules: the alerting rules parse and their expressions are valid PromQL."""
    done = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    """promtool test rules: each alert fires on the series that should raise it, and not before."""
    done = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], capture_output=True, text=True,
                          timeout=60, cwd=DEPLOY)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_what_its_generator_makes() -> None:
    """The shipped JSON is the output of scripts/grafana-dashboard (grafanalib), not a hand edit."""
    pytest.importorskip("grafanalib", reason="grafanalib comes with the dev extra")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "grafana-dashboard"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_dashboard_is_well_formed() -> None:
    """The parts Grafana needs: uid, title, a Prometheus datasource input, the pool variable, and
    panels with unique ids, a type, a grid position inside 24 columns and PromQL targets."""
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert board["uid"] == "poolwarden"
    assert board["title"] == "poolwarden"
    assert isinstance(board["schemaVersion"], int)
    assert [i["pluginId"] for i in board["__inputs"]] == ["prometheus"]
    assert [v["name"] for v in board["templating"]["list"]] == ["pool"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in {"row", "stat", "timeseries"}
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y"))
        assert pos["x"] + pos["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"]
            assert all(t["expr"] and t["refId"] for t in panel["targets"])


def _exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def _metrics_used() -> set[str]:
    names: set[str] = set()
    for expr in _exprs():
        names |= {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                  if n.startswith(PREFIXES) and n not in LABELS}
    return names


async def _emitted() -> set[str]:
    warden = Warden(environ={}, watchdog=0.1)
    warden.pool("db", connector=FakeConnector(), min_size=1, max_size=1, acquire_timeout=0.01,
                check_after_idle=None)
    warden.client("api", factory=FakeClientDriver("httpx"))
    warden.client("cache", factory=FakeClientDriver("redis"))
    async with warden:
        pool = warden["db"]
        async with pool.acquire():
            with pytest.raises(PoolTimeout):
                await pool.acquire()
        prometheus.render(warden)
        emit("leak.suspected", "db", "held too long")
        pool.expire()  # a discard with its reason
        await asyncio.sleep(0.3)  # a heartbeat of the watchdog
        body, _ = prometheus.render(warden)
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}


async def test_every_metric_a_panel_or_rule_uses_is_emitted() -> None:
    """No panel or alert reads a metric the exporter does not write (a typo would alert on nothing)."""
    used = _metrics_used()
    assert len(used) >= 15
    missing: dict[str, Any] = {name: None for name in sorted(used - await _emitted())}
    assert not missing, f"used by the dashboard or the rules but never exported: {sorted(missing)}"
