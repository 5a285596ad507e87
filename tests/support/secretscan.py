"""A scan over the whole test run: no page token may appear in a log line or a logged exception.

Registered as a plugin by tests/conftest.py. Every record any `pagewire.*`
logger (DEBUG included), gRPC, asyncio or anything else emits in the test
process is formatted — message, extra fields and traceback — and searched for
page-token-shaped strings (Meta page and Instagram tokens start `EAA` / `IGAA`;
every test token does too). At the end the service logs the end-to-end stacks
wrote under the run's temporary directory are searched the same way. A hit
fails the run and names where it was, never the token itself.

`leaks` is the same search for one test's own haystacks (exported spans, scraped
metrics), with the exact secrets and texts that test used.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pagewire.kit.logs import JsonFormatter

TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9+/_-])(?:EAA|IGAA)[A-Za-z0-9]{16,}")
_LOG_FILES = ("*.log", "stdout", "stderr")


@dataclass
class _Leaks:
    found: list[str] = field(default_factory=list)
    records: int = 0
    files: int = 0


_leaks = _Leaks()


def _masked(token: str) -> str:
    return f"{token[:6]}…({len(token)} chars)"


class _ScanHandler(logging.Handler):
    """Formats each record as the services do and remembers where a token-shaped string was."""

    def __init__(self, leaks: _Leaks) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("test"))
        self.leaks = leaks
        self.current = "collection"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted still gets its raw parts scanned
            text = f"{record.msg!r} {record.args!r} {vars(record)!r}"
        self.leaks.records += 1
        for match in TOKEN_SHAPE.findall(text):
            self.leaks.found.append(f"{self.current}: logger {record.name}: {_masked(match)}")


_handler = _ScanHandler(_leaks)


def leaks(secrets: dict[str, str], texts: dict[str, str]) -> list[str]:
    """Where any of `secrets` (name → value), or anything token-shaped, occurs in `texts`
    (where → text): "<where>: <secret name>" per hit, never the secret itself."""
    found = []
    for where, text in texts.items():
        for name, secret in secrets.items():
            if secret and secret in text:
                found.append(f"{where}: {name}")
        for match in TOKEN_SHAPE.findall(text):
            found.append(f"{where}: token-shaped {_masked(match)}")
    return found


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_handler)
    # Our services log at DEBUG what they do per request; those lines are scanned too.
    logging.getLogger("pagewire").setLevel(logging.DEBUG)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _handler.current = item.nodeid
    root = logging.getLogger()
    if _handler not in root.handlers:  # something replaced the root handlers (setup_logging)
        root.addHandler(_handler)


def _scan_files(directory: Path) -> None:
    for pattern in _LOG_FILES:
        for path in directory.rglob(pattern):
            if not path.is_file():
                continue
            _leaks.files += 1
            text = path.read_text(errors="replace")
            for match in TOKEN_SHAPE.findall(text):
                _leaks.found.append(f"{path}: {_masked(match)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        try:
            _scan_files(factory.getbasetemp())
        except OSError:
            pass
    if _leaks.found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if _leaks.found:
        terminalreporter.section("page tokens found in logs", red=True)
        for line in sorted(set(_leaks.found))[:50]:
            terminalreporter.line(line)
    else:
        terminalreporter.line(
            f"secret scan: no page token in {_leaks.records} log records"
            f" or {_leaks.files} service log files"
        )
