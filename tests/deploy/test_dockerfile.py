"""The Dockerfile, read with Docker's own parser (the `dockerfile` package): no engine runs here."""

from __future__ import annotations

import re
import shlex
import tomllib

import dockerfile
import pytest

from tests.deploy import policy
from tests.deploy.conftest import REPO, by_kind

DOCKERFILE = REPO / "Dockerfile"
# The only paths the build context may give the image.
ALLOWED_SOURCES = {
    "constraints.txt",
    "pyproject.toml",
    "README.md",
    "protos/",
    "pagewire/",
    "services/",
}
SECRET_LIKE = re.compile(r"(^|/)(var/|\.env|.*\.token$|.*\.pem$|.*\.key$|.*keyring.*|\.git/)")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cc|make|python3?-dev|grpcio-tools)\b")


def _commands() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for cmd in _commands():
        if cmd.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(cmd)
    return stages


def _args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    out = {}
    for cmd in _commands():
        if cmd.cmd == "FROM":
            break
        if cmd.cmd == "ARG" and "=" in cmd.value[0]:
            key, _, value = cmd.value[0].partition("=")
            out[key] = value
    return out


def _base(stage: list[dockerfile.Command]) -> str:
    image = stage[0].value[0]
    for key, value in _args().items():
        image = image.replace("${" + key + "}", value).replace("$" + key, value)
    return image


def test_multi_stage_on_slim_python_311() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", _base(stage)), _base(stage)
    # The environment built in one stage runs in the other: same base image.
    assert len({_base(s) for s in stages}) == 1


def test_the_final_stage_runs_as_a_fixed_non_root_uid() -> None:
    users = [c.value[0] for c in _stages()[-1] if c.cmd == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, "USER must be a fixed numeric uid, not root"
    assert not group or (group.isdigit() and int(group) != 0)
    assert int(user) == 10001  # the chart's podSecurityContext.runAsUser


def test_no_compilers_or_build_tools_in_the_final_stage() -> None:
    final = _stages()[-1]
    for cmd in final:
        if cmd.cmd == "RUN":
            assert not COMPILERS.search(" ".join(cmd.value)), cmd.original
    copied = [c for c in final if c.cmd == "COPY"]
    assert all(any(f.startswith("--from=") for f in c.flags) for c in copied)
    assert [c.value[0] for c in copied] == ["/opt/venv"]
    # The stub generator is installed in its own environment, never into /opt/venv.
    for cmd in _stages()[0]:
        if cmd.cmd == "RUN" and "/opt/venv/bin/pip install" in cmd.value[0]:
            assert "grpcio-tools" not in cmd.value[0] and "[dev]" not in cmd.value[0]


def test_nothing_secret_is_copied_in() -> None:
    for cmd in _commands():
        if cmd.cmd == "ADD":
            pytest.fail(f"ADD fetches or unpacks implicitly; use COPY: {cmd.original}")
        if cmd.cmd != "COPY" or any(f.startswith("--from=") for f in cmd.flags):
            continue
        sources = cmd.value[:-1]
        for source in sources:
            assert source in ALLOWED_SOURCES, f"{source} is not on the allow-list"
            assert not SECRET_LIKE.search(source), source
    for cmd in _commands():
        if cmd.cmd in ("ENV", "ARG"):
            names = cmd.value[0::2] if cmd.cmd == "ENV" else [v.split("=")[0] for v in cmd.value]
            for name in names:
                assert not re.search(r"SECRET|TOKEN|PASSWORD|KEYRING", name), cmd.original
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"var/", "**/*.token", ".env", ".git/", ".venv/", "pagewire/proto/pagewire/"} <= ignored


def test_stubs_are_generated_at_build_exactly_as_make_protos_does() -> None:
    runs = " ".join(" ".join(c.value) for c in _stages()[0] if c.cmd == "RUN")
    makefile = (REPO / "Makefile").read_text()

    def protoc_flags(text: str) -> list[str]:
        line = re.search(r"grpc_tools\.protoc ([^$]*?)(?:\$|\\\n)", text.replace("\\\n", " "))
        assert line, "no protoc invocation"
        return sorted(f for f in shlex.split(line[1]) if f.startswith("-"))

    def rewrite(text: str) -> str:
        found = re.search(r"sed -i -E '([^']+)'", text)
        assert found, "no import rewrite"
        return found[1]

    assert protoc_flags(runs) == protoc_flags(makefile)
    assert rewrite(runs) == rewrite(makefile)


def test_every_entry_point_the_chart_runs_exists(rendered: dict[str, list[dict]]) -> None:
    final = _stages()[-1]
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert cmd.json and cmd.value[:2] == ("python", "-m")
    modules = {cmd.value[2]}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for objs in rendered.values():
        for _, template in policy.pod_specs(objs):
            for c in template["spec"]["containers"]:
                command = c["command"]
                if command[:2] == ["python", "-m"]:
                    modules.add(command[2])
                else:
                    assert command[0] in scripts, command
    for module in modules:
        path = REPO / module.replace(".", "/") / "__main__.py"
        assert path.is_file(), f"{module}: no {path.relative_to(REPO)}"
    assert modules == {f"services.{s}" for s in policy.SERVICES}


def test_the_image_exposes_the_ports_the_chart_uses(rendered: dict[str, list[dict]]) -> None:
    exposed = {int(p) for c in _commands() if c.cmd == "EXPOSE" for p in c.value}
    for dep in by_kind(rendered["defaults"], "Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for port in c["ports"]:
                if port["name"] in ("grpc", "http"):
                    assert port["containerPort"] in exposed
