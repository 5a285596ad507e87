"""Alembic environment of the subscriptions schema (run through pagewire.kit.migrate)."""

from __future__ import annotations

from alembic import context

from pagewire.kit.migrate import run_env
from services.subscriptions.store import Base

run_env(context, Base.metadata)
