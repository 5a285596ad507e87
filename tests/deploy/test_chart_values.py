"""The chart refuses values that would deploy something broken, with a message saying why."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import render


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["redis.enabled=false"],
            "in-process lock, correct for ONE replica only",
        ),
        (
            ["router.terminationGracePeriodSeconds=5"],
            "router.terminationGracePeriodSeconds (5) must be longer",
        ),
        (
            ["gateway.terminationGracePeriodSeconds=12"],
            "gateway.terminationGracePeriodSeconds (12) must be longer",
        ),
        (["tokens.healthPort=null"], "tokens.healthPort is required with tls.enabled"),
        (["gateway.secret.appSecret=abc"], "inline secrets need both appSecret and verifyToken"),
        (["tls.services.router.cert=PEM"], "an inline certificate needs cert, key and tls.ca"),
        (["podSecurityContext.runAsUser=0"], "runAsUser"),
        (["gateway.replicas=3"], "additional properties 'replicas' not allowed"),
        (["router.resources.limits=null"], "limits"),
        (["logLevel=VERBOSE"], "logLevel"),
        (["subscriptions.settings.graphVersion=25"], "graphVersion"),
    ],
)
def test_bad_values_are_refused(helm: str, values: list[str], message: str) -> None:
    args: list[str] = []
    for value in values:
        args += ["--set", value]
    with pytest.raises(render.CheckFailed) as refused:
        render.render(helm, (), *args)
    assert message in str(refused.value)


def test_one_router_without_redis_is_accepted(helm: str) -> None:
    text = render.render(
        helm,
        (),
        "--set",
        "redis.enabled=false",
        "--set",
        "router.replicaCount=1",
        "--set",
        "router.autoscaling.enabled=false",
    )
    assert "PAGEWIRE_REDIS_URL" not in text
