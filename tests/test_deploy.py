"""deploy/: the Prometheus alerts and the Grafana dashboard ask for series the gateway
really exports, and the files fit together with docker-compose.yml.

The metric-name check needs nothing but a running gateway. haproxy, promtool
(Debian/Ubuntu package `prometheus`) and docker-compose are used when they are on PATH,
and those tests are skipped, saying so, when they are not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import Settings
from tests.server import GatewayProcess, free_port
from tests.test_metrics import Scrape, scrape
from tests.tushttp import error_code, patch, upload

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "gateway.json"
COMPOSE = ROOT / "docker-compose.yml"
# The gateway replicas of docker-compose.yml (same image, same environment).
REPLICAS = ("gateway-a", "gateway-b")

# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus makes itself.
SYNTHETIC_SERIES = {"up"}
# Notifications on, to a loopback port no one listens on: every delivery fails, so the
# hook series (deliveries by outcome, the outbox by state) are exported too.
HOOKS_ENV = {
    "GATEWAY_HOOK_URL": f"http://127.0.0.1:{free_port()}/hook",
    "GATEWAY_HOOK_SECRET": "test-hook-secret-0123456789abcdef",
    "GATEWAY_HOOK_POLL_INTERVAL": "0.1",
    "GATEWAY_HOOK_TIMEOUT": "1",
}

# PromQL functions and aggregation operators: identifiers that are followed by "(".
PROMQL_FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "end", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "tan", "tanh", "time", "timestamp", "vector", "year",
}  # fmt: skip
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}  # fmt: skip
# Counter-like functions; their argument must be a series that only goes up.
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
# tusd's names: gauges that only ever go up (within one process), like counters.
MONOTONIC_GAUGES = {
    "tusd_bytes_received",
    "tusd_uploads_created",
    "tusd_uploads_finished",
    "tusd_uploads_terminated",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER_NAME = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_COUNTER_CALL = re.compile(r"\b(rate|irate|increase|resets)\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
_QUANTILE = re.compile(r"\bhistogram_quantile\s*\(\s*[0-9.]+\s*,\s*(\w+)\s+by\s*\(([^()]*)\)")


class PromQLError(ValueError):
    pass


@dataclass
class Series:
    """What one PromQL expression reads."""

    metrics: set[str] = field(default_factory=set)
    # (metric, label names in its matchers)
    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    counter_arguments: set[str] = field(default_factory=set)
    quantile_groupings: list[set[str]] = field(default_factory=list)


def promql_series(expr: str) -> Series:
    """Metric names and matcher labels in `expr`; PromQLError names an unknown function."""
    text = _VARIABLE.sub("0", _STRING.sub('""', expr))
    found = Series()
    for name, labels in ((m[1], m[2]) for m in _SELECTOR.finditer(text)):
        if name and name not in PROMQL_KEYWORDS:
            found.selectors.append((name, set(_MATCHER_NAME.findall(labels))))
    found.counter_arguments = {m[2] for m in _COUNTER_CALL.finditer(_SELECTOR.sub(r"\1", text))}
    found.quantile_groupings = [
        {label.strip() for label in m[2].split(",")} for m in _QUANTILE.finditer(text)
    ]
    text = _SELECTOR.sub(r"\1 ", text)
    while _BRACKETS.search(text):  # ranges and subqueries, [5m] or [$__rate_interval:1m]
        text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for name, call in _IDENTIFIER.findall(text):
        if call:
            if name not in PROMQL_FUNCTIONS:
                raise PromQLError(f"unknown PromQL function {name!r} in {expr!r}")
        elif name not in PROMQL_KEYWORDS and name.lower() not in ("inf", "nan"):
            found.metrics.add(name)
    return found


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert expression and dashboard query."""
    found = [(f"alert {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        inner = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
        if inner:
            found.append((f"variable {variable['name']}", inner[1]))
    return found


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


# -- the PromQL reader itself ----------------------------------------------------------------


def test_promql_reader_finds_metric_names() -> None:
    cases = {
        'histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{method="PATCH", '
        'status=~"2.."}[5m])))': {"a_bucket"},
        'sum(rate(b_total{x="rate(c) and d{e}"}[1m])) / 1e6 > bool 0.5 and on(instance) '
        'up{job="g"} == 0': {"b_total", "up"},
        "delta(tusd_uploads_finished[30m] offset 5m) == 0": {"tusd_uploads_finished"},
        "bare_gauge > 2": {"bare_gauge"},
        "max_over_time(x:recorded:rate5m[$__rate_interval:1m])": {"x:recorded:rate5m"},
        'sum without (pid) (g{instance=~"$instance"}) / scalar(sum(h))': {"g", "h"},
        "sum(rate(n_total[5m])) by (operation) / ignoring(le) group_left sum(m)": {
            "n_total",
            "m",
        },
        'absent(up{job="gateway"})': {"up"},
        "-Inf < 1": set(),
    }
    for expr, names in cases.items():
        assert promql_series(expr).metrics == names, expr
    found = promql_series('rate(s_count{outcome="error", operation!="x"}[5m])')
    assert found.selectors == [("s_count", {"outcome", "operation"})]
    assert found.counter_arguments == {"s_count"}
    assert promql_series(
        "histogram_quantile(0.5, sum by (le, op) (rate(b[1m])))"
    ).quantile_groupings == [{"le", "op"}]
    with pytest.raises(PromQLError, match="histogram_quantil"):
        promql_series("histogram_quantil(0.9, rate(x_bucket[5m]))")


# -- every series the deploy files use exists -----------------------------------------------


def exercised_gateway_metrics(gateway: GatewayProcess) -> Scrape:
    """/metrics after one upload and a few errors, as Prometheus would scrape it."""
    url = upload(gateway, os.urandom(50_000))
    conflict = patch(gateway, url, b"x", 1)
    assert conflict.status_code == 409 and error_code(conflict) == "ERR_MISMATCHED_OFFSET"
    refused = httpx.post(gateway.files_url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert refused.status_code == 401
    for _ in range(100):  # the upload's webhook: tried (and failed), the outbox measured
        scraped = scrape(gateway)
        if {"gateway_hook_deliveries_total", "gateway_hook_outbox_depth"} <= scraped.names():
            return scraped
        time.sleep(0.1)
    raise AssertionError("no webhook delivery was tried")


def test_alerts_and_dashboard_use_only_exported_series(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    exported = exercised_gateway_metrics(gateway_factory(**HOOKS_ENV))
    names = exported.names() | SYNTHETIC_SERIES
    problems = []
    used: set[str] = set()
    for where, expr in queries():
        found = promql_series(expr)
        used |= found.metrics
        for metric in sorted(found.metrics - names):
            problems.append(f"{where}: {metric} is not exported by the gateway")
        for metric, labels in found.selectors:
            if metric in SYNTHETIC_SERIES or metric not in names:
                continue
            unknown = labels - exported.label_names(metric) - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {metric} has no label {sorted(unknown)}")
        for metric in found.counter_arguments:
            kind = exported.types.get(metric)
            counter_like = metric.endswith(("_total", "_count", "_bucket", "_sum"))
            if not (counter_like or metric in MONOTONIC_GAUGES):
                problems.append(f"{where}: rate()/increase() over {metric} ({kind})")
        for grouping in found.quantile_groupings:
            if "le" not in grouping:
                problems.append(f"{where}: histogram_quantile without 'le' in by(...)")
    assert not problems, "\n".join(problems)
    # A reader that found nothing would pass everything: make sure it saw the lot.
    assert len(used) >= 20, sorted(used)


def test_dashboard_covers_the_gateway() -> None:
    used: set[str] = set()
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            used |= promql_series(target["expr"]).metrics
    wanted = {
        "tusd_uploads_created",
        "tusd_uploads_finished",
        "tusd_bytes_received",
        "tusd_requests_total",
        "tusd_errors_total",
        "tusd_connections_open",
        "gateway_request_duration_seconds_bucket",
        "gateway_active_uploads",
        "gateway_bytes_in_flight",
        "gateway_store_operation_duration_seconds_bucket",
        "gateway_store_operation_duration_seconds_count",
        "gateway_catalog_operation_duration_seconds_bucket",
        "gateway_seal_duration_seconds_bucket",
        "gateway_seal_failures_total",
        "gateway_lock_wait_seconds_bucket",
        "gateway_lock_release_requests_total",
        "gateway_checksum_mismatches_total",
        "gateway_auth_failures_total",
    }
    assert wanted <= used, f"no panel for {sorted(wanted - used)}"


# -- the files are well-formed and fit together ------------------------------------------------


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"].strip()) > 40, rule["alert"]
    exprs = " ".join(str(rule["expr"]) for rule in rules)
    for needle in (
        'status=~"5.."',
        'outcome="error"',
        "gateway_seal_failures_total",
        "ERR_STORED_DATA_CORRUPT",
        "gateway_auth_failures_total",
        "gateway_lock_release_requests_total",
        'up{job="gateway"}',
        'method="PATCH"',
        "delta(tusd_uploads_finished",
    ):
        assert needle in exprs, f"no alert uses {needle}"


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    datasource_uid = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid, panel["title"]
            promql_series(target["expr"])  # no unknown functions


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provisioning = mounts["./deploy/grafana/provisioning"]
    dashboards_dir = mounts["./deploy/grafana/dashboards"]
    assert provisioning == "/etc/grafana/provisioning"
    source = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["uid"] == "prometheus"
    assert "prometheus" in compose()["services"]
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "gateway.yml").read_text()
    )["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_dir


def test_prometheus_config_matches_compose() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    services = compose()["services"]
    prometheus = services["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file

    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["gateway"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    environment = services[REPLICAS[0]]["environment"]
    assert all(services[name]["environment"] == environment for name in REPLICAS)
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"{name}:{environment['GATEWAY_PORT']}" for name in REPLICAS]

    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    # Relative paths in prometheus.yml resolve against its folder (/etc/prometheus).
    token_file = PROMETHEUS_DIR / auth["credentials_file"]
    token = token_file.read_text().strip()
    assert token, "the metrics token file is empty"
    assert environment["GATEWAY_METRICS_TOKEN"] == token, (
        "docker-compose.yml GATEWAY_METRICS_TOKEN must equal deploy/prometheus/metrics-token"
    )


def _run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"


def test_haproxy_accepts_its_config() -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not on PATH (install Debian's `haproxy` package to check)")
    _run(["haproxy", "-c", "-f", "deploy/haproxy/haproxy.cfg"])


def test_promtool_accepts_config_and_rules() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not on PATH (install Debian's `prometheus` package to check)")
    _run(["promtool", "check", "config", "deploy/prometheus/prometheus.yml"])
    _run(["promtool", "check", "rules", "deploy/prometheus/alerts.yml"])
    _run(["promtool", "test", "rules", "deploy/prometheus/alerts.test.yml"])


def test_compose_sets_only_settings_the_gateway_reads() -> None:
    settings = {f"GATEWAY_{f.name.upper()}" for f in fields(Settings)}
    for name in (*REPLICAS, "migrate", "gateway-cli"):
        environment = compose()["services"][name]["environment"]
        assert set(environment) - settings == set(), name


def test_docker_compose_config_is_valid() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not on PATH")
    _run(["docker-compose", "-f", "docker-compose.yml", "config", "-q"])
