"""The deploy policy over rendered Kubernetes objects: `violations(objects)` lists what breaks it.

What every Pagewire install must have, whatever its values: probes (liveness and
startup on the overall health status, never a service's own name, so a database
outage restarts nothing), resources with a memory limit and the restricted
security context on every container; a headless twin for every gRPC Service;
NetworkPolicies that admit exactly the callers the code has (tokens: router and
subscriptions only); cert-manager Certificates whose CN and only DNS name are the
identity, matching the pod that mounts them. tests/deploy runs it over every value
set, and over deliberately broken objects to prove it can fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

GRPC_SERVICES = ("router", "tokens", "subscriptions")
SERVICES = ("gateway", *GRPC_SERVICES)
COMPONENT = "app.kubernetes.io/component"
ADDR = re.compile(r"^PAGEWIRE_(ROUTER|TOKENS|SUBSCRIPTIONS)_ADDR$")
TLS_MOUNT = "/var/run/secrets/pagewire/tls"
CERTIFICATE = ("cert-manager.io/v1", "Certificate")
# An identity as the services parse it (pagewire.kit.principal).
IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# cert-manager.io/v1 Certificate: no schema ships with kubernetes-validate, so the
# fields and usages are checked here (a misspelt `dnsName` would otherwise pass).
CERTIFICATE_SPEC = {
    "secretName", "secretTemplate", "commonName", "dnsNames", "ipAddresses", "uris",
    "emailAddresses", "otherNames", "subject", "literalSubject", "duration", "renewBefore",
    "renewBeforePercentage", "privateKey", "usages", "issuerRef", "isCA", "keystores",
    "revisionHistoryLimit", "additionalOutputFormats", "nameConstraints",
    "encodeUsagesInRequest",
}  # fmt: skip
CERTIFICATE_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment",
    "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
    "decipher only", "any", "server auth", "client auth", "code signing",
    "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
    "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}  # fmt: skip
TARGET = re.compile(r"^dns:///(?P<host>[a-z0-9.-]+):(?P<port>[0-9]+)$")


def _name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_specs(objs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, pod template) for every object that runs pods."""
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]
        elif obj["kind"] == "Pod":
            yield obj, obj


def env_of(container: dict) -> dict[str, dict]:
    """name → env entry of a container."""
    return {e["name"]: e for e in container.get("env", [])}


def component(obj: dict) -> str | None:
    return obj["metadata"].get("labels", {}).get(COMPONENT)


def _uid_is_root(ctx: dict) -> bool:
    return ctx.get("runAsUser") == 0 or ctx.get("runAsGroup") == 0


def container_violations(workload: dict, template: dict) -> list[str]:
    """Security context, resources and probes of every container of one workload."""
    out = []
    where = _name(workload)
    spec = template["spec"]
    pod_ctx = spec.get("securityContext", {})
    if _uid_is_root(pod_ctx):
        out.append(f"{where}: pod securityContext runs as root")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        out.append(f"{where}: shares a host namespace")
    if spec.get("automountServiceAccountToken") is not False:
        out.append(f"{where}: automountServiceAccountToken is not false")
    if spec.get("enableServiceLinks") is not False:
        # Service "pagewire-router" would inject PAGEWIRE_ROUTER_PORT=tcp://…, a setting's name.
        out.append(f"{where}: enableServiceLinks is not false")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    long_running = workload["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        at = f"{where} container {c['name']}"
        ctx = c.get("securityContext", {})
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            out.append(f"{at}: runAsNonRoot is not true")
        if _uid_is_root(ctx):
            out.append(f"{at}: runs as root (uid or gid 0)")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{at}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            out.append(f"{at}: privileged")
        if ctx.get("readOnlyRootFilesystem") is not True:
            out.append(f"{at}: readOnlyRootFilesystem is not true")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{at}: capabilities do not drop ALL")
        if caps.get("add"):
            out.append(f"{at}: adds capabilities {caps['add']}")
        seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            out.append(f"{at}: seccompProfile is not RuntimeDefault")
        res = c.get("resources", {})
        for kind in ("cpu", "memory"):
            if kind not in res.get("requests", {}):
                out.append(f"{at}: no {kind} request")
        if "memory" not in res.get("limits", {}):
            out.append(f"{at}: no memory limit")
        image = c.get("image", "")
        if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
            out.append(f"{at}: image {image!r} is not pinned to a tag or digest")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            out.append(f"{at}: /tmp is not an emptyDir (the root filesystem is read-only)")
        if long_running:
            out += _probe_violations(at, c)
    return out


def _probe_violations(at: str, c: dict) -> list[str]:
    out = []
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = c.get(probe)
        if not spec:
            out.append(f"{at}: no {probe}")
            continue
        if "grpc" in ports:
            # The plaintext health port when there is one: the grpc port may require mTLS.
            want = ports.get("health", ports["grpc"])
            if spec.get("grpc", {}).get("port") != want:
                out.append(f"{at}: {probe} is not a native gRPC probe on the health/grpc port")
            service = spec.get("grpc", {}).get("service")
            if probe != "readinessProbe" and service:
                # A service's own name goes NOT_SERVING while PostgreSQL or Redis is
                # unreachable: a liveness probe on it would restart every pod meanwhile.
                out.append(
                    f'{at}: {probe} asks for {service!r}, not the overall status "":'
                    " a database outage would restart the pod"
                )
        elif "http" in ports:
            if "httpGet" not in spec:
                out.append(f"{at}: {probe} is not an HTTP probe")
        else:
            out.append(f"{at}: no port named grpc or http")
    return out


def shutdown_violations(workload: dict, template: dict) -> list[str]:
    """terminationGracePeriodSeconds must outlast preStop sleep + drain + grace."""
    out = []
    spec = template["spec"]
    grace_period = spec.get("terminationGracePeriodSeconds", 30)
    for c in spec.get("containers", []):
        env = env_of(c)
        needed = 0.0
        for var in ("PAGEWIRE_SHUTDOWN_DRAIN_S", "PAGEWIRE_SHUTDOWN_GRACE_S"):
            if "value" in env.get(var, {}):
                needed += float(env[var]["value"])
        if c["name"] == "gateway":
            needed += 10  # uvicorn's graceful shutdown (services/gateway/__main__.py)
        needed += c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        if grace_period <= needed:
            out.append(
                f"{_name(workload)}: terminationGracePeriodSeconds {grace_period} is not longer"
                f" than preStop + drain + grace ({needed:g} s)"
            )
    return out


def _services(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] == "Service"]


def service_violations(objs: list[dict]) -> list[str]:
    """Named ports; every gRPC Service has a headless twin; dns:/// targets resolve to one."""
    out = []
    services = {o["metadata"]["name"]: o for o in _services(objs)}
    for name, svc in services.items():
        ports = svc["spec"].get("ports", [])
        for p in ports:
            if p.get("name") not in ("grpc", "http", "metrics"):
                out.append(
                    f"Service/{name}: port {p.get('port')} is not named grpc, http or metrics"
                )
        grpc = [p for p in ports if p.get("name") == "grpc"]
        if grpc and svc["spec"].get("clusterIP") != "None":
            twin = services.get(f"{name}-headless")
            if (
                twin is None
                or twin["spec"].get("clusterIP") != "None"
                or twin["spec"].get("selector") != svc["spec"].get("selector")
                or not any(
                    p.get("name") == "grpc" and p["port"] == grpc[0]["port"]
                    for p in twin["spec"].get("ports", [])
                )
            ):
                out.append(f"Service/{name}: gRPC Service without a headless twin {name}-headless")
    for workload, template in pod_specs(objs):
        namespace = workload["metadata"].get("namespace")
        for c in template["spec"].get("containers", []):
            for var, entry in env_of(c).items():
                if not ADDR.match(var):
                    continue
                m = TARGET.match(entry.get("value", ""))
                if not m:
                    out.append(f"{_name(workload)}: {var} is not a dns:/// target")
                    continue
                svc_name, _, rest = m["host"].partition(".")
                svc = services.get(svc_name)
                if (
                    svc is None
                    or svc["spec"].get("clusterIP") != "None"
                    or not rest.startswith(f"{namespace}.svc.")
                    or not any(
                        p["port"] == int(m["port"]) and p.get("name") == "grpc"
                        for p in svc["spec"]["ports"]
                    )
                ):
                    out.append(
                        f"{_name(workload)}: {var}={entry['value']} is not the grpc port of a"
                        " headless Service in its namespace"
                    )
    return out


# ---------------------------------------------------------------- NetworkPolicy model


def _selects(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (an empty selector selects everything)."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_is_release_pod(peer: dict, labels: dict) -> bool:
    """A peer matches a pod of this release (same namespace, podSelector only)."""
    if "ipBlock" in peer or "namespaceSelector" in peer:
        return False  # namespaces and CIDRs: outside the release (checked separately)
    return _selects(peer.get("podSelector"), labels)


def _port_matches(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") in (port, None) for p in ports)


def _policies(objs: list[dict], labels: dict, direction: str) -> list[dict]:
    return [
        o
        for o in objs
        if o["kind"] == "NetworkPolicy"
        and direction in o["spec"].get("policyTypes", ["Ingress"])
        and _selects(o["spec"]["podSelector"], labels)
    ]


def ingress_sources(objs: list[dict], labels: dict, port: int) -> tuple[set[str], list[dict]]:
    """Who may connect to `port` of pods with `labels`: (release components, outside peers).

    Outside peers are namespace/CIDR peers; a rule without `from` admits everyone ("*").
    """
    inside: set[str] = set()
    outside: list[dict] = []
    for policy in _policies(objs, labels, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            if not _port_matches(rule, port):
                continue
            peers = rule.get("from")
            if not peers:
                inside.add("*")
                outside.append({"everyone": True})
                continue
            for peer in peers:
                if "ipBlock" in peer or "namespaceSelector" in peer:
                    outside.append(peer)
                    continue
                for src in _workload_labels(objs):
                    if _peer_is_release_pod(peer, src):
                        inside.add(src.get(COMPONENT, "?"))
    return inside, outside


def egress_allows(objs: list[dict], src: dict, dst: dict, port: int) -> bool:
    """Whether pods with labels `src` may open `port` on pods with labels `dst`."""
    for policy in _policies(objs, src, "Egress"):
        for rule in policy["spec"].get("egress", []):
            if not _port_matches(rule, port):
                continue
            peers = rule.get("to")
            if not peers or any(_peer_is_release_pod(p, dst) for p in peers):
                return True
    return False


def egress_ports(objs: list[dict], src: dict) -> set[int]:
    """Ports pods with labels `src` may reach outside the release (CIDRs and other namespaces)."""
    ports: set[int] = set()
    for policy in _policies(objs, src, "Egress"):
        for rule in policy["spec"].get("egress", []):
            if any("ipBlock" in p or "namespaceSelector" in p for p in rule.get("to", [])):
                ports |= {p["port"] for p in rule.get("ports", []) if "port" in p}
    return ports


def _workload_labels(objs: list[dict]) -> list[dict]:
    return [t["metadata"].get("labels", {}) for _, t in pod_specs(objs)]


def _deployments(objs: list[dict]) -> dict[str, dict]:
    return {component(o): o for o in objs if o["kind"] == "Deployment"}


def _grpc_port(deployment: dict) -> int | None:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports", []):
            if p.get("name") in ("grpc", "http"):
                return p["containerPort"]
    return None


def calls(deployment: dict) -> set[str]:
    """The services a Deployment's code calls, read from its PAGEWIRE_<SERVICE>_ADDR variables."""
    out = set()
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        for var in env_of(c):
            m = ADDR.match(var)
            if m:
                out.add(m[1].lower())
    return out


def network_violations(objs: list[dict]) -> list[str]:
    """Deny-all, then exactly the code's callers on each service; tokens: router, subscriptions."""
    out = []
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    if not policies:
        return ["no NetworkPolicy at all"]
    deployments = _deployments(objs)
    for _, template in pod_specs(objs):
        labels = template["metadata"].get("labels", {})
        who = labels.get(COMPONENT, "?")
        for direction in ("Ingress", "Egress"):
            if not _policies(objs, labels, direction):
                out.append(f"{who} pods: no NetworkPolicy restricts {direction.lower()}")
    deny_all = [
        p
        for p in policies
        if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        and all(_selects(p["spec"]["podSelector"], lab) for lab in _workload_labels(objs))
    ]
    if not deny_all:
        out.append("no default-deny NetworkPolicy selecting every pod of the release")
    for dst, deployment in deployments.items():
        port = _grpc_port(deployment)
        dst_labels = deployment["spec"]["template"]["metadata"]["labels"]
        inside, outside = ingress_sources(objs, dst_labels, port)
        callers = {src for src, dep in deployments.items() if dst in calls(dep)}
        if "*" in inside:
            out.append(f"{dst} admits everyone on port {port}")
        if inside - {"*"} != callers:
            out.append(
                f"{dst} admits {sorted(inside - {'*'})} on port {port} but its callers are"
                f" {sorted(callers)}"
            )
        if dst == "tokens":
            if inside - {"*"} != {"router", "subscriptions"} or outside:
                out.append(
                    f"tokens must admit only router and subscriptions; it admits"
                    f" {sorted(inside)} and {len(outside)} peer(s) outside the release"
                )
        if dst == "gateway" and not outside:
            out.append("gateway admits nothing from outside (the ingress controller)")
        for src in callers:
            src_labels = deployments[src]["spec"]["template"]["metadata"]["labels"]
            if not egress_allows(objs, src_labels, dst_labels, port):
                out.append(f"{src} calls {dst} but its egress to port {port} is not allowed")
    for _, template in pod_specs(objs):
        labels = template["metadata"].get("labels", {})
        if 53 not in egress_ports(objs, labels):
            out.append(f"{labels.get(COMPONENT)} pods: no DNS egress")
    return out


def _tls_secrets(objs: list[dict]) -> dict[str, str]:
    """Secret name → the component whose pods mount it as their mTLS certificate."""
    out = {}
    for workload, template in pod_specs(objs):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for c in template["spec"].get("containers", []):
            for m in c.get("volumeMounts", []):
                secret = volumes.get(m["name"], {}).get("secret")
                if m["mountPath"] == TLS_MOUNT and secret:
                    out[secret["secretName"]] = component(workload) or "?"
    return out


def certificate_violations(objs: list[dict]) -> list[str]:
    """cert-manager Certificates: known fields, identity = CN = the only DNS name, usages.

    A Certificate whose Secret a service mounts must name that service: its clients
    verify that name, and the others authorize its calls by it.
    """
    out = []
    mounted = _tls_secrets(objs)
    secrets: dict[str, str] = {}
    for obj in objs:
        if (obj.get("apiVersion"), obj.get("kind")) != CERTIFICATE:
            continue
        where = _name(obj)
        spec = obj.get("spec", {})
        unknown = sorted(set(spec) - CERTIFICATE_SPEC)
        if unknown:
            out.append(f"{where}: unknown fields {unknown}")
        usages = spec.get("usages", [])
        if set(usages) - CERTIFICATE_USAGES:
            out.append(f"{where}: unknown usages {sorted(set(usages) - CERTIFICATE_USAGES)}")
        if not spec.get("issuerRef", {}).get("name"):
            out.append(f"{where}: no issuerRef.name")
        secret = spec.get("secretName")
        if not secret:
            out.append(f"{where}: no secretName")
        elif secret in secrets:
            out.append(f"{where}: writes Secret {secret}, as {secrets[secret]} does")
        else:
            secrets[secret] = where
        identity = spec.get("commonName", "")
        if not IDENTITY.match(identity) or spec.get("dnsNames") != [identity]:
            out.append(
                f"{where}: commonName {identity!r} and dnsNames {spec.get('dnsNames')} are not"
                " one identity (CN = the only SAN DNS name)"
            )
        if spec.get("isCA") or spec.get("ipAddresses") or spec.get("uris"):
            out.append(f"{where}: more than an identity (isCA, ipAddresses or uris)")
        if "client auth" not in usages:
            out.append(f"{where}: usages {usages} lack client auth (every identity is a client)")
        user = mounted.get(secret or "")
        if user is not None:
            if identity != user:
                out.append(f"{where}: {user} pods mount Secret {secret}, but it names {identity!r}")
            if user in GRPC_SERVICES and "server auth" not in usages:
                out.append(f"{where}: {user} serves gRPC but its usages lack server auth")
    return out


def violations(objs: list[dict]) -> list[str]:
    """Everything in `objs` that breaks the deploy policy; [] when it holds."""
    out = []
    for workload, template in pod_specs(objs):
        out += container_violations(workload, template)
        out += shutdown_violations(workload, template)
        sa = template["spec"].get("serviceAccountName")
        if not sa or sa == "default":
            out.append(f"{_name(workload)}: no ServiceAccount of its own")
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if not any(
            o["kind"] == "PodDisruptionBudget" and _selects(o["spec"]["selector"], labels)
            for o in objs
        ):
            out.append(f"{_name(dep)}: no PodDisruptionBudget")
    out += service_violations(objs)
    out += network_violations(objs)
    out += certificate_violations(objs)
    return out
