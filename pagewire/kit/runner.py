"""Entry point wrapper for every service's __main__: clean exit on bad settings."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pagewire.kit.settings import SettingsError


def run(main: Callable[[], Coroutine[Any, Any, None]], service: str) -> None:
    """Runs `main`; a settings problem prints one line naming the variable and exits 2."""
    try:
        asyncio.run(main())
    except SettingsError as exc:
        print(f"pagewire {service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Signal handlers normally stop the service first; this covers Ctrl-C during start.
        raise SystemExit(130) from None
