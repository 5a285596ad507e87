"""Alembic environment of the tokens schema (run through pagewire.kit.migrate)."""

from __future__ import annotations

from alembic import context

from pagewire.kit.migrate import run_env
from services.tokens.store import Base

run_env(context, Base.metadata)
