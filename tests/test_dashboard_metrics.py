"""The Grafana dashboard queries only metrics a running cluster exports.

A real cluster (`strife cluster up`) makes payments for a client in this
process; every process's /metrics is scraped, this process's too (it is the
client, and the client's outbox depth is a client-side metric). Each panel's
PromQL is taken apart into its series selectors, and each selector must
match a series of the right type in some scrape: a renamed metric, a label
value that no longer exists (a method's full name, a state) or a suffix that
does not fit the metric's type fails here rather than as an empty panel.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from strife.client import StrifeClient
from strife.cluster.seeds import account_of, password_of
from strife.observability.metrics import REGISTRY as STRIFE_METRICS

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "strife.json"
UP_TIMEOUT_S = 60.0
TOPOLOGY = """\
data_dir = "cluster"
[[banks]]
name = "alpha"
customers = 2
[[banks]]
name = "beta"
customers = 2
[gateways]
count = 2
[timeouts]
heartbeat_s = 0.2
lease_ttl_s = 1.0
in_doubt_s = 1.0
"""

# ---------------------------------------------------------------- a real cluster


@contextmanager
def cluster_up(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`strife cluster up` in a child process; its state once every process
    serves /metrics. Always stopped (SIGTERM: the supervisor stops its children)."""
    config = tmp_path / "topology.toml"
    config.write_text(TOPOLOGY)
    root = tmp_path / "cluster"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "strife.cluster",
            "up",
            "--config",
            str(config),
            "--balancer-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not (root / "cluster.json").exists():
            assert up.poll() is None, "cluster up exited early"
            assert time.monotonic() < deadline, "cluster never came up"
            time.sleep(0.1)
        state: dict[str, Any] = json.loads((root / "cluster.json").read_text())
        yield state
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


async def make_payments(state: dict[str, Any], outbox: Path) -> None:
    """Committed payments both ways and one aborted for want of funds, through
    the balancer, each customer with its own client (so both gateways are picked)."""
    certs = Path(state["root"]) / "certs" / "client-default"
    payments = [("alpha-1", "beta", "beta-1", 1_500), ("beta-2", "alpha", "alpha-2", 700)]
    for n, (payer, bank, payee, amount) in enumerate(payments):
        async with StrifeClient(
            certs=certs, balancer=state["balancer"], outbox=outbox.with_suffix(f".{n}.db")
        ) as client:
            await client.login(payer, password_of(payer), payer.partition("-")[0])
            for _ in range(3):
                paid = await client.pay(f"{bank}/{account_of(payee)}", amount, "USD", wait_s=10)
                assert paid.state.name == "COMMITTED", paid
            if n == 0:
                refused = await client.pay(f"{bank}/{account_of(payee)}", 10**9, "USD", wait_s=10)
                assert refused.state.name == "ABORTED", refused


# ---------------------------------------------------------------- expositions


@dataclass
class Exposition:
    """Series by sample name, and each sample name's family type, over many scrapes."""

    series: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.series.setdefault(sample.name, []).append(dict(sample.labels))
                self.types[sample.name] = family.type
                self.values[sample.name] = self.values.get(sample.name, 0.0) + sample.value


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


# ---------------------------------------------------------------- PromQL


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_STRING = r'"(?:[^"\\]|\\.)*"'
_SELECTOR = re.compile(
    r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{(?:[^}\"]|" + _STRING + r")*\})?(\s*\()?"
)
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(" + _STRING + ")")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2"})


def _unquote(literal: str) -> str:
    """A PromQL double-quoted string's value (Go escapes)."""
    return str(json.loads(literal))


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression (functions, aggregations,
    grouping labels and ranges aside)."""
    bare = _RANGE.sub("", _GROUPING.sub(" ", expr))
    found = []
    for match in _SELECTOR.finditer(bare):
        name, braces, call = match.groups()
        if call or name in _KEYWORDS:
            continue  # a function or an aggregation, or an operator
        matchers = tuple(
            (label, op, _unquote(value)) for label, op, value in _MATCHER.findall(braces or "")
        )
        found.append(Selector(name, matchers))
    return found


def _matches(labels: dict[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def expected_types(name: str) -> set[str]:
    """What family a sample name can come from: `_bucket` only from a histogram,
    `_sum`/`_count` from a histogram or summary, `_total` from a counter."""
    if name.endswith("_bucket"):
        return {"histogram"}
    if name.endswith(("_sum", "_count")):
        return {"histogram", "summary"}
    if name.endswith("_total"):
        return {"counter"}
    return {"gauge", "unknown"}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


# ---------------------------------------------------------------- tests


def test_selectors_are_taken_apart_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{method="/x/Y",'
        ' code!~"a}b"}[$__rate_interval]))) / on (instance) b_total and c'
    )
    assert selectors(expr) == [
        Selector("a_seconds_bucket", (("method", "=", "/x/Y"), ("code", "!~", "a}b"))),
        Selector("b_total", ()),
        Selector("c", ()),
    ]
    assert selectors('sum(rate(x{m!~"/grpc\\\\..*"}[5m]))') == [
        Selector("x", (("m", "!~", "/grpc\\..*"),))
    ]
    assert expected_types("h_bucket") == {"histogram"}
    assert expected_types("h_count") == {"histogram", "summary"}


def test_the_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    assert board["uid"] and board["title"]
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    source = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert selectors(target["expr"]), target["expr"]
    text = json.dumps(board)
    for wanted in (
        "strife_payment_outcomes_total",
        "histogram_quantile(0.5, sum by (le) (rate(strife_rpc_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(strife_rpc_latency_seconds_bucket",
        "strife_gateway_payments_in_flight",
        "strife_bank_in_doubt_transfers",
        "strife_client_outbox_unsettled",
        "strife_balancer_picks_total",
        "strife_bank_group_commit_batch_size",
        "strife_storage_commit_seconds_bucket",
    ):
        assert wanted in text, wanted


def test_every_metric_the_dashboard_queries_exists_in_a_running_cluster(tmp_path: Path) -> None:
    # The client library keeps its metrics in Strife's registry; this test
    # process exports them as an application embedding the client would.
    client_metrics, _thread = start_http_server(0, addr="127.0.0.1", registry=STRIFE_METRICS)
    try:
        with cluster_up(tmp_path) as state:
            asyncio.run(make_payments(state, tmp_path / "outbox"))
            children = state["children"]
            assert {c["name"] for c in children} == {
                "balancer",
                "bank-alpha",
                "bank-beta",
                "gateway-gw-1",
                "gateway-gw-2",
            }
            assert all(c["metrics"] for c in children), children
            targets_file = Path(state["root"]) / "prometheus-targets.json"
            targets = json.loads(targets_file.read_text())
            assert sorted((t["labels"]["process"], t["targets"]) for t in targets) == sorted(
                (c["name"], [c["metrics"]]) for c in children
            )
            assert {t["labels"]["role"] for t in targets} == {"balancer", "bank", "gateway"}
            exposition = Exposition()
            for child in children:
                exposition.add(scrape(child["metrics"]))
            exposition.add(scrape(f"127.0.0.1:{client_metrics.server_port}"))
    finally:
        client_metrics.shutdown()
        client_metrics.server_close()
    assert not targets_file.exists(), "a stopped cluster leaves no scrape targets behind"

    # The counts behind the panels moved: payments were counted as decided,
    # the balancer picked gateways, and commits were timed.
    assert exposition.values["strife_payment_outcomes_total"] >= 7
    assert exposition.values["strife_balancer_picks_total"] >= 2
    assert exposition.values["strife_storage_commit_seconds_count"] > 0
    states = {labels["state"] for labels in exposition.series["strife_payment_outcomes_total"]}
    assert states == {"COMMITTED", "ABORTED"}

    missing = []
    for title, expr in dashboard_exprs():
        for selector in selectors(expr):
            kind = exposition.types.get(selector.name)
            if kind is None:
                missing.append(f"{title}: {selector.name} is not exported")
            elif kind not in expected_types(selector.name):
                missing.append(f"{title}: {selector.name} is a {kind}")
            elif not any(
                _matches(labels, selector.matchers) for labels in exposition.series[selector.name]
            ):
                missing.append(f"{title}: no {selector.name} series matches {selector.matchers}")
    assert not missing, "\n".join(missing)
