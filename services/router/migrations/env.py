"""Alembic environment for the router's schema."""

from alembic import context

from pagewire.kit.migrate import run_env
from services.router.store import Base

run_env(context, Base.metadata)
