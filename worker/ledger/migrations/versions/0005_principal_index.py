"""An index for "what else does this principal hold on the target", asked once per
revocation batch: without it a target holding most grants is scanned each time.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_LIVE = sa.text("state IN ('pending', 'active')")


def upgrade() -> None:
    op.create_index("ix_grants_principal_live", "grants", ["principal", "target"],
                    postgresql_where=_LIVE, sqlite_where=_LIVE)


def downgrade() -> None:
    op.drop_index("ix_grants_principal_live", table_name="grants")
