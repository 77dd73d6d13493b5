"""The Prometheus alert rules and the Grafana dashboard beside them.

promtool checks the rules, the scrape configuration and the dashboard's queries, and runs the rules' unit
tests (``config/prometheus/alerts_test.yml``). Every metric a rule or a dashboard query names must be one the
exporter serves (``integrations.metrics.SERVED``), with labels and label values it serves: a misspelt name
selects nothing, and an alert on nothing never fires.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from integrations.errors import ErrorType
from integrations.ledger.models import OperationStatus
from integrations.metrics import ATTEMPT_DURATION, SERVED
from integrations.outcome import WaitReason
from integrations.webhooks.receiver import Received

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "config" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "config" / "grafana" / "integrations-dashboard.json"
README = ROOT / "README.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on PATH: install Debian's `prometheus` package (apt-get install prometheus), "
    "which ships it",
)

# A classic histogram is served as <name>_bucket, <name>_sum and <name>_count, never under its own name.
HISTOGRAMS = frozenset({ATTEMPT_DURATION})
SERIES = frozenset(
    {name for name in SERVED if name not in HISTOGRAMS}
    | {name + suffix for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# The labels the exporter serves, with the values of those whose values are a closed set; Prometheus adds
# ``instance`` and ``job``.
LABEL_VALUES: dict[str, frozenset[str] | None] = {
    "provider": None,
    "operation": None,
    "queue": None,
    "le": None,
    "instance": None,
    "job": None,
    "type": None,
    "result": frozenset(
        {"succeeded", *(error.value for error in ErrorType), *(result.value for result in Received)}
    ),
    "outcome": frozenset(
        {
            *(status.value for status in OperationStatus if status.terminal),
            "replayed",
            "conflict",
            "invalid",
        }
    ),
    "reason": frozenset(reason.value for reason in WaitReason),
    "source": frozenset({"limit", "quota"}),
}
RUNBOOK_SECTIONS = (
    "A provider is down",
    "A provider rate-limits us",
    "Dead letters grow",
    "Operations wait too long",
    "Webhooks stop arriving",
)
SEVERITIES = ("warning", "critical")

# ---------------------------------------------------------------------------------------------------------
# PromQL, read well enough to find what an expression selects.

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Followed by a parenthesised list of label names (group_left and group_right may stand alone).
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
WORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+\b)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<variable>\$\{[^}]*\}|\$\w+)
    | (?P<operator>=~|!~|!=|==|<=|>=|[=<>+\-*/%^@(){},])
    """,
    re.VERBOSE,
)
# A regular expression that is only literals joined by |: its values can be checked one by one.
ALTERNATIVES = re.compile(r"[A-Za-z0-9_:]+(?:\|[A-Za-z0-9_:]+)*")


@dataclass
class Selected:
    """What an expression selects: metric names and the labels it matches or groups on, with the values
    it matches them against; ``grouped``: the labels its aggregations keep (``by``)."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    values: set[tuple[str, str]] = field(default_factory=set)
    grouped: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of each token, without spaces, comments and ranges ([5m], [$__rate_interval])."""
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position : position + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment", "range"):
            found.append((kind, match.group()))
        position = match.end()
    return found


def unquote(text: str) -> str:
    """A PromQL string's value: raw between backticks, else with Go's escapes (JSON's, for what is used)."""
    if text.startswith("`"):
        return text[1:-1]
    if text.startswith("'"):
        text = '"' + text[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    return str(json.loads(text))


def selected(expr: str) -> Selected:
    """The metric names, labels and label values a PromQL expression uses."""
    found = Selected()
    parts = tokens(expr)

    def matchers(start: int) -> int:
        """Read ``{label op "value", ...}`` from the ``{`` at ``start``; return the index after ``}``."""
        index = start + 1
        while parts[index] != ("operator", "}"):
            if parts[index] == ("operator", ","):
                index += 1
                continue
            (label_kind, label), (_, op), (value_kind, value) = parts[index : index + 3]
            if label_kind != "name" or value_kind != "string":
                raise ValueError(f"cannot read the label matchers of {expr!r}")
            if label == "__name__":
                if op != "=":
                    raise ValueError(f"{expr!r}: a metric name matched with {op} cannot be checked")
                found.metrics.add(unquote(value))
            else:
                found.labels.add(label)
                found.values.add((label, unquote(value)))
            index += 3
        return index + 1

    def label_list(start: int, kept: bool) -> int:
        """Read ``(label, ...)`` from the ``(`` at ``start``; return the index after ``)``."""
        index = start + 1
        while parts[index] != ("operator", ")"):
            kind, text = parts[index]
            if kind == "name":
                found.labels.add(text)
                if kept:
                    found.grouped.add(text)
            elif text != ",":
                raise ValueError(f"cannot read the label list of {expr!r}")
            index += 1
        return index + 1

    index = 0
    while index < len(parts):
        kind, text = parts[index]
        following = parts[index + 1] if index + 1 < len(parts) else ("", "")
        if kind == "operator" and text == "{":
            index = matchers(index)
            continue
        index += 1
        if kind != "name":
            continue
        word = text.lower()
        if word in GROUPING:
            if following == ("operator", "("):
                index = label_list(index, kept=word == "by")
        elif word in WORDS or word in AGGREGATIONS or following == ("operator", "("):
            continue  # an operator, a number, an aggregation or a function
        else:
            found.metrics.add(text)
            if following == ("operator", "{"):
                index = matchers(index)
    return found


def problems(expr: str) -> list[str]:
    """What in ``expr`` the exporter does not serve: metric names, labels, label values."""
    found = selected(expr)
    said: list[str] = []
    for name in sorted(found.metrics - SERIES):
        if name in HISTOGRAMS:
            said.append(f"{name} is a histogram: use {name}_bucket, {name}_sum or {name}_count")
        else:
            said.append(f"metric {name} is not served (served: {', '.join(sorted(SERIES))})")
    for label in sorted(found.labels - set(LABEL_VALUES)):
        said.append(f"label {label} is not served (served: {', '.join(sorted(LABEL_VALUES))})")
    for label, value in sorted(found.values):
        known = LABEL_VALUES.get(label)
        if known is None or "$" in value or not ALTERNATIVES.fullmatch(value):
            continue  # an open set, a dashboard variable, or a pattern
        for literal in sorted(set(value.split("|")) - known):
            said.append(f"{label}={literal!r} is never served (served: {', '.join(sorted(known))})")
    return said


# ---------------------------------------------------------------------------------------------------------
# The files.


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


GRAFANA_FUNCTION = re.compile(r"\s*(label_values|query_result|label_names|metrics)\s*\((.*)\)\s*", re.DOTALL)


def variable_query(query: str) -> str:
    """The PromQL a Grafana variable's query runs: ``query_result(<expr>)`` runs ``<expr>``, and
    ``label_values(<selector>, <label>)`` what ``group by (<label>) (<selector>)`` would."""
    match = GRAFANA_FUNCTION.fullmatch(query)
    if match is None:
        return query
    function, inside = match.groups()
    if function == "query_result":
        return inside
    selector, _, label = inside.rpartition(",")
    if function != "label_values" or not selector.strip():
        raise ValueError(
            f"{query!r} names no metric that can be checked: use label_values(<metric>, <label>)"
        )
    return f"group by ({label.strip()}) ({selector.strip()})"


def dashboard_queries() -> dict[str, str]:
    """Each PromQL query of the dashboard, by where it is: "panel <title> <refId>" or "variable <name>"."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries: dict[str, str] = {}
    for panel in dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries[f"variable {variable['name']}"] = variable_query(text)
    return queries


def legend_labels() -> dict[str, set[str]]:
    """The labels each dashboard target's legend ({{provider}}) shows."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {
        f"panel {panel['title']!r} {target['refId']}": set(
            re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", ""))
        )
        for panel in dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    }


def promtool(*arguments: str | Path, cwd: Path = PROMETHEUS) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *map(str, arguments)], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    shown = " ".join(["promtool", *map(str, arguments)])
    assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


# ---------------------------------------------------------------------------------------------------------
# promtool


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    output = promtool("check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERTS_TEST.name)


@needs_promtool
def test_scrape_config_example_passes_promtool_check() -> None:
    promtool("check", "config", SCRAPE_CONFIG.name)


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, checked by promtool as a recording rule."""
    interval = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
    variable = re.compile(r"\$\{?\w+\}?")
    rules = [
        {"record": f"dashboard:query_{number}", "expr": variable.sub(".*", interval.sub("5m", expr))}
        for number, expr in enumerate(dashboard_queries().values())
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    output = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in output


# ---------------------------------------------------------------------------------------------------------
# The rules: complete, tested, and on served metrics.


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_rule_says_how_urgent_for_whom_and_where_to_look(rule: dict[str, Any]) -> None:
    assert rule.get("for"), f"{rule['alert']}: give it a for: duration"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for text in (annotations["summary"], annotations["description"]):
        assert "{{ $labels.provider }}" in text, f"{rule['alert']}: name the provider in {text!r}"
    sections = [
        section for section in RUNBOOK_SECTIONS if f'README.md, "{section}"' in annotations["description"]
    ]
    assert len(sections) == 1, f"{rule['alert']}: point the description at one of {RUNBOOK_SECTIONS}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_rule_names_only_served_metrics(rule: dict[str, Any]) -> None:
    assert selected(rule["expr"]).metrics, f"{rule['alert']}: no metric found in {rule['expr']!r}"
    said = problems(rule["expr"])
    assert not said, f"{rule['alert']} in {ALERTS}: " + "; ".join(said)


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    cases = [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]
    rules = alert_rules()
    assert rules, f"{ALERTS}: no alert rules found"
    for rule in rules:
        name = rule["alert"]
        own = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in own), f"{ALERTS_TEST}: no case where {name} fires"
        assert any(not case.get("exp_alerts") for case in own), (
            f"{ALERTS_TEST}: no case where {name} is silent"
        )


def test_runbook_sections_the_alerts_point_at_exist() -> None:
    headings: set[str] = set()
    in_code = False
    for line in README.read_text(encoding="utf-8").splitlines():
        in_code ^= line.startswith("```")
        heading = re.fullmatch(r"#{1,6} +(.+?) *#*", line)
        if heading and not in_code:
            headings.add(heading.group(1))
    missing = [section for section in RUNBOOK_SECTIONS if section not in headings]
    assert missing == [], f"{ALERTS} points at README.md sections it lacks: {missing}"


# ---------------------------------------------------------------------------------------------------------
# The dashboard.


@pytest.mark.parametrize("where", sorted(dashboard_queries()))
def test_dashboard_query_names_only_served_metrics(where: str) -> None:
    expr = dashboard_queries()[where]
    assert selected(expr).metrics, f"{where}: no metric found in {expr!r}"
    said = problems(expr)
    assert not said, f"{where} in {DASHBOARD}: " + "; ".join(said)


def test_dashboard_legends_show_labels_their_queries_keep() -> None:
    queries = dashboard_queries()
    legends = legend_labels()
    assert legends, f"{DASHBOARD}: no panel legend found"
    for where, labels in legends.items():
        kept = selected(queries[where]).grouped
        assert labels <= kept, (
            f"{where} in {DASHBOARD}: the legend shows {labels - kept}, not kept by its query"
        )


def test_dashboard_shows_every_served_metric() -> None:
    used = {
        next((name for name in HISTOGRAMS if metric.startswith(name + "_")), metric)
        for expr in dashboard_queries().values()
        for metric in selected(expr).metrics
    }
    assert sorted(set(SERVED) - used) == [], f"{DASHBOARD} has no panel for these metrics"


# ---------------------------------------------------------------------------------------------------------
# The reading of PromQL, on names planted where the files might misspell them.


@pytest.mark.parametrize(
    ("expr", "said"),
    [
        ("integrations_attempt_total", "metric integrations_attempt_total is not served"),
        (
            'sum by (provider) (rate(integrations_operation_total{outcome="dead"}[5m]))',
            "metric integrations_operation_total is not served",
        ),
        (
            "sum(rate(integrations_attempts_total[5m])) by (provider) / on (provider) group_left () "
            "max by (provider) (integrations_breaker_states offset 30m)",
            "metric integrations_breaker_states is not served",
        ),
        ('{__name__="integrations_dead_letter"}', "metric integrations_dead_letter is not served"),
        (
            "histogram_quantile(0.95, rate(integrations_attempt_duration_seconds[5m]))",
            "integrations_attempt_duration_seconds is a histogram",
        ),
        (
            'max by (provder) (integrations_breaker_state{provider=~"$provider"})',
            "label provder is not served",
        ),
        (
            'rate(integrations_attempts_total{result!~"succeeded|provider_rejectd"}[$__rate_interval])',
            "result='provider_rejectd' is never served",
        ),
        (
            'integrations_deferrals_total{reason="breaker_opened"} > bool 0',
            "reason='breaker_opened' is never served",
        ),
    ],
)
def test_an_unserved_name_is_reported(expr: str, said: str) -> None:
    assert any(problem.startswith(said) for problem in problems(expr)), problems(expr)


def test_served_names_pass() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (provider, le) (rate(integrations_attempt_duration_seconds_bucket"
        '{provider=~"$provider"}[$__rate_interval]))) > 1e0'
        " and max by (provider) (integrations_breaker_state) >= 1"
        " unless sum by (provider) (rate(integrations_attempts_total{result='timeout', queue=`a.b`}[1h30m])) == 0"
        " or max without (instance) (integrations_dead_letters offset 30m) # a comment"
    )
    assert problems(expr) == []
    assert selected(expr).metrics == {
        "integrations_attempt_duration_seconds_bucket",
        "integrations_breaker_state",
        "integrations_attempts_total",
        "integrations_dead_letters",
    }


def test_a_grafana_variable_query_is_read() -> None:
    assert selected(variable_query("label_values(integrations_attempts_total, provider)")).metrics == {
        "integrations_attempts_total"
    }
    assert problems(variable_query("label_values(integrations_attempt_total, provider)"))
