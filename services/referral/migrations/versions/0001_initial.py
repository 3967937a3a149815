"""partners, codes, conversions, leaderboards

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.foundation.db import UTCDateTime
from services.foundation.kit_schema import create_kit_tables_v1, drop_kit_tables_v1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_kit_tables_v1()
    op.create_table(
        "conversion",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("business_ref", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("business_ref"),
    )
    with op.batch_alter_table("conversion", schema=None) as batch_op:
        batch_op.create_index("ix_conversion_user_state", ["user_id", "state"], unique=False)

    op.create_table(
        "conversion_reward",
        sa.Column("conversion_id", sa.String(length=32), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("referrer_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("points_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("counted", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("conversion_id", "level"),
        sa.UniqueConstraint("event_id", name="uq_conversion_reward_event"),
    )
    with op.batch_alter_table("conversion_reward", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversion_reward_points_transaction_id"), ["points_transaction_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_conversion_reward_referrer_id"), ["referrer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_conversion_reward_level"), ["level"], unique=False)

    op.create_table(
        "leaderboard_count",
        sa.Column("period_key", sa.String(length=16), nullable=False),
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("conversions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("period_key", "campaign", "kind", "user_id"),
    )
    with op.batch_alter_table("leaderboard_count", schema=None) as batch_op:
        batch_op.create_index("ix_leaderboard_rank", ["period_key", "campaign", "kind", "conversions"], unique=False)

    op.create_table(
        "partner",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=True),
        sa.Column("referrer", sa.BigInteger(), nullable=True),
        sa.Column("link_state", sa.String(length=16), nullable=False),
        sa.Column("linked_referrer_id", sa.String(length=64), nullable=True),
        sa.Column("link_code", sa.String(length=16), nullable=True),
        sa.Column("link_source", sa.String(length=160), nullable=True),
        sa.Column("link_seq", sa.BigInteger(), nullable=True),
        sa.Column("linked_at", UTCDateTime(), nullable=True),
        sa.Column("device_hash", sa.String(length=128), nullable=True),
        sa.Column("phone_hash", sa.String(length=128), nullable=True),
        sa.Column("flagged_by", sa.String(length=64), nullable=True),
        sa.Column("flag_reason", sa.String(length=256), nullable=True),
        sa.Column("reviewed_at", UTCDateTime(), nullable=True),
        sa.Column("reviewed_by", sa.String(length=64), nullable=True),
        sa.Column("review_note", sa.String(length=512), nullable=True),
        sa.Column("descendants", sa.Integer(), nullable=False),
        sa.Column("direct", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("points_own", sa.Integer(), nullable=False),
        sa.Column("points_below", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id"),
    )
    with op.batch_alter_table("partner", schema=None) as batch_op:
        batch_op.create_index("ix_partner_device_linked", ["device_hash", "linked_at"], unique=False)
        batch_op.create_index("ix_partner_phone_linked", ["phone_hash", "linked_at"], unique=False)
        batch_op.create_index("ix_partner_referrer_seq", ["referrer", "link_seq"], unique=False)
        batch_op.create_index("ix_partner_referrer_linked", ["referrer", "linked_at"], unique=False)
        batch_op.create_index("ix_partner_state_seq", ["link_state", "link_seq"], unique=False)
        batch_op.create_index("ix_partner_link_seq", ["link_seq"], unique=False)

    op.create_table(
        "link_refusal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("referrer_id", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("message", sa.String(length=512), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("link_refusal", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_link_refusal_user_id"), ["user_id"], unique=False)

    op.create_table(
        "partner_product",
        sa.Column("partner", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.Column("own", sa.Integer(), nullable=False),
        sa.Column("below", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("partner", "product"),
    )
    op.create_table(
        "referral_code",
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoke_reason", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("code"),
    )
    with op.batch_alter_table("referral_code", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_referral_code_user_id"), ["user_id"], unique=False)

    # ### end Alembic commands ###


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table("referral_code", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referral_code_user_id"))

    op.drop_table("referral_code")
    op.drop_table("partner_product")
    with op.batch_alter_table("link_refusal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_refusal_user_id"))

    op.drop_table("link_refusal")
    with op.batch_alter_table("partner", schema=None) as batch_op:
        batch_op.drop_index("ix_partner_state_seq")
        batch_op.drop_index("ix_partner_link_seq")
        batch_op.drop_index("ix_partner_referrer_linked")
        batch_op.drop_index("ix_partner_referrer_seq")
        batch_op.drop_index("ix_partner_phone_linked")
        batch_op.drop_index("ix_partner_device_linked")

    op.drop_table("partner")
    with op.batch_alter_table("leaderboard_count", schema=None) as batch_op:
        batch_op.drop_index("ix_leaderboard_rank")

    op.drop_table("leaderboard_count")
    with op.batch_alter_table("conversion_reward", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversion_reward_level"))
        batch_op.drop_index(batch_op.f("ix_conversion_reward_referrer_id"))
        batch_op.drop_index(batch_op.f("ix_conversion_reward_points_transaction_id"))

    op.drop_table("conversion_reward")
    with op.batch_alter_table("conversion", schema=None) as batch_op:
        batch_op.drop_index("ix_conversion_user_state")

    op.drop_table("conversion")
    drop_kit_tables_v1()
    # ### end Alembic commands ###
