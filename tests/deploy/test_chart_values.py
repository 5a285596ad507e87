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
        (["tls.enabled=false"], "Refused unless unsafeInsecureGrpc=true is set as well"),
        (["tls.clients.helpdesk.cert=PEM"], "tls.clients.helpdesk: an inline certificate needs"),
        (
            [
                "tls.certManager.issuerRef.name=pagewire-ca",
                "tls.ca=PEM",
                "tls.services.router.cert=PEM",
                "tls.services.router.key=PEM",
            ],
            "tls.services.router: an inline certificate and tls.certManager.issuerRef.name",
        ),
        (["router.readers={app,gateway}"], "router.readers: the gateway faces the internet"),
        (["router.senders={gateway}"], "router.senders: the gateway faces the internet"),
        (["auth.operators={cli,gateway}"], "auth.operators: the gateway faces the internet"),
        (["subscriptions.readers={gateway}"], "subscriptions.readers: the gateway faces"),
        (["tls.certManager.duration=90d"], "/tls/certManager/duration"),
    ],
)
def test_bad_values_are_refused(helm: str, values: list[str], message: str) -> None:
    args: list[str] = []
    for value in values:
        args += ["--set", value]
    with pytest.raises(render.CheckFailed) as refused:
        render.render(helm, (), *args)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tls.clients.router={}", "tls.clients.router: router is a service of this chart"),
        ("tls.clients.Help_Desk={}", "invalid propertyName 'Help_Desk'"),
        ("router.readers=[]", "at '/router/readers': minItems"),
        ("subscriptions.readers=[]", "at '/subscriptions/readers': minItems"),
        ('router.accountAccess={"app": []}', "at '/router/accountAccess/app': minItems"),
        ('router.accountAccess={"app": ["a;b"]}', "'a;b' does not match pattern"),
        ('router.accountAccess={"gateway": ["*"]}', "router.accountAccess: the gateway may"),
        ('subscriptions.accountAccess={"router": ["acme"]}', "the router looks up the page"),
        ("networkPolicy.extraFrom.tokens=[]", "additional properties 'tokens' not allowed"),
    ],
)
def test_bad_structured_values_are_refused(helm: str, value: str, message: str) -> None:
    with pytest.raises(render.CheckFailed) as refused:
        render.render(helm, (), "--set-json", value)
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
