"""deploy/grafana: the dashboard's layout, and every metric and label its queries use, checked
against what a real bridge and worker export after serving a streamed chat completion."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator

import httpx
import promql_parser
import pytest

from tests.integration.conftest import CHAT_MODEL
from tests.prometheus import scrape

from .conftest import ROOT

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "tokenwire.json").read_text())
PANELS = [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
# Grafana's own variables, replaced as Grafana would before the query reaches Prometheus.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_)?interval")
LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    for panel in PANELS:
        for target in panel["targets"]:
            yield f"{panel['title']} / {target['refId']}", GRAFANA_INTERVALS.sub("1m", target["expr"])


def selectors(expr: str) -> dict[str, set[str]]:
    """The metrics a query selects, each with the labels the query reads from it (in its
    matchers, or grouped by in an aggregation over it)."""
    return _selectors(promql_parser.parse(expr))


def _selectors(root: promql_parser.Expr) -> dict[str, set[str]]:
    used: dict[str, set[str]] = defaultdict(set)

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            used[node.name] |= {matcher.name for matcher in node.matchers.matchers}
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            for name in _selectors(node.expr):
                used[name] |= set(node.modifier.labels)

    promql_parser.walk(root, pre_visit=visit)
    return dict(used)


def missing(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What `expr` reads that `exported` (series name → its label names) does not have."""
    problems = []
    for name, labels in selectors(expr).items():
        if name not in exported:
            problems.append(f"no series {name}")
        elif unknown := labels - exported[name] - TARGET_LABELS - {"__name__"}:
            problems.append(f"{name} has no label {sorted(unknown)}")
    return problems


def test_panels_are_laid_out_on_the_grid_with_one_id_each() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_every_panel_queries_the_chosen_prometheus() -> None:
    datasource = next(v for v in DASHBOARD["templating"]["list"] if v["name"] == "datasource")
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    for panel in PANELS:
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
    assert [where for where, expr in queries()]  # and each one parses:
    for where, expr in queries():
        assert selectors(expr), where


@pytest.fixture(scope="module")
def exported(bridge_url: str, worker_metrics_url: str) -> dict[str, set[str]]:
    """Series name → label names, as the session's bridge and worker export them once they
    served a streamed chat completion (histograms with labels have no series before)."""
    messages = [{"role": "user", "content": "Name three colours."}]
    body = {"model": CHAT_MODEL, "messages": messages, "max_tokens": 4, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{bridge_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")
    series: dict[str, set[str]] = defaultdict(set)
    for metrics in (scrape(f"{bridge_url}/metrics"), scrape(worker_metrics_url)):
        for name, labels in metrics.samples:
            series[name] |= {label for label, _ in labels}
    return dict(series)


def test_every_metric_and_label_a_panel_reads_is_exported(exported: dict[str, set[str]]) -> None:
    problems = [f"{where}: {problem}" for where, expr in queries() for problem in missing(expr, exported)]
    assert not problems, "\n".join(problems)
    # The check itself catches a misspelt metric and a label the metric does not carry.
    assert missing('sum by (model) (rate(tokenwire_http_requests_total{route="/"}[1m]))', exported) == [
        "tokenwire_http_requests_total has no label ['model']"
    ]
    assert missing("tokenwire_engine_running_sequence", exported) == ["no series tokenwire_engine_running_sequence"]


def test_the_model_variable_lists_an_exported_label(exported: dict[str, set[str]]) -> None:
    model = next(v for v in DASHBOARD["templating"]["list"] if v["name"] == "model")
    metric, label = LABEL_VALUES.fullmatch(model["query"]["query"]).groups()
    assert label in exported[metric]
