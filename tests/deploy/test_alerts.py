"""The chart's Prometheus alert rules: off by default, and the right expression when on."""

from __future__ import annotations

from tests.deploy.conftest import by_kind, render

REJECTED = 'increase(pagewire_webhooks_received_total{outcome="rejected"}[10m]) > 0'


def _rules(objs: list[dict]) -> dict[str, dict]:
    return {
        rule["alert"]: rule
        for obj in by_kind(objs, "PrometheusRule").values()
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
    }


def test_no_rule_without_the_value(rendered: dict[str, list[dict]]) -> None:
    assert by_kind(rendered["defaults"], "PrometheusRule") == {}


def test_the_rejected_webhooks_alert_renders_when_enabled(rendered: dict[str, list[dict]]) -> None:
    (rule_object,) = by_kind(rendered["ha"], "PrometheusRule").values()
    assert rule_object["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule_object["metadata"]["namespace"] == "pagewire"
    labels = rule_object["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"  # what the Prometheus selects on
    assert labels["app.kubernetes.io/part-of"] == "pagewire"
    rule = _rules(rendered["ha"])["PagewireWebhooksRejected"]
    assert rule["expr"] == REJECTED
    assert rule["labels"]["severity"] == "critical"
    description = rule["annotations"]["description"]
    # Prometheus' own template syntax survives Helm's.
    assert "{{ $labels.platform }}" in description and "INVALID_ARGUMENT" in description
    assert "{{ $labels.platform }}" in rule["annotations"]["summary"]


def test_the_severity_and_labels_are_values(helm: str) -> None:
    objs = render.objects(
        render.render(
            helm,
            (),
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.labels.team=messaging",
        )
    )
    (rule_object,) = by_kind(objs, "PrometheusRule").values()
    assert rule_object["metadata"]["labels"]["team"] == "messaging"
    rule = _rules(objs)["PagewireWebhooksRejected"]
    assert (rule["expr"], rule["labels"]["severity"]) == (REJECTED, "warning")


def test_unknown_rule_values_are_refused(helm: str) -> None:
    try:
        render.render(helm, (), "--set", "metrics.prometheusRule.for=5m")
    except render.CheckFailed as refused:
        assert "additional properties 'for' not allowed" in str(refused)
    else:
        raise AssertionError("an unknown prometheusRule value was accepted")


def test_the_router_not_told_alert_renders_when_enabled(rendered: dict[str, list[dict]]) -> None:
    rule = _rules(rendered["ha"])["PagewireRouterNotTold"]
    assert (rule["expr"], rule["for"]) == ("max(pagewire_router_notices_pending) > 0", "15m")
    assert "{{ $value | humanize }}" in rule["annotations"]["description"]
