"""hub schema v1: devices, events, statuses, snippets

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=True),
        sa.Column("availability_at", sa.Float(), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("fw", sa.String(48), nullable=True),
        sa.Column("last_status", sa.Text(), nullable=True),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device", sa.String(32), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("boot", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t_ms", sa.Integer(), nullable=False),
        sa.Column("time", sa.Float(), nullable=True),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("state", sa.String(3), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("vote", sa.String(5), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.UniqueConstraint("device", "boot", "seq", name="uq_events_device_boot_seq"),
    )
    op.create_index("ix_events_device_received", "events", ["device", "received"])
    op.create_table(
        "statuses",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device", sa.String(32), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("boot", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("uptime_s", sa.Integer(), nullable=False),
        sa.Column("lat_p50_ms", sa.Float(), nullable=False),
        sa.Column("lat_p95_ms", sa.Float(), nullable=False),
        sa.Column("lat_max_ms", sa.Float(), nullable=False),
        sa.Column("arena_used", sa.Integer(), nullable=False),
        sa.Column("dropped_audio", sa.Integer(), nullable=False),
        sa.Column("dropped_events", sa.Integer(), nullable=False),
        sa.Column("rssi", sa.Integer(), nullable=True),
        sa.Column("battery", sa.Float(), nullable=True),
        sa.UniqueConstraint("device", "boot", "seq", name="uq_statuses_device_boot_seq"),
    )
    op.create_table(
        "snippets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device", sa.String(32), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("boot", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("sr", sa.Integer(), nullable=False),
        sa.Column("pre_ms", sa.Integer(), nullable=False),
        sa.Column("pcm", sa.LargeBinary(), nullable=False),
        sa.Column("teacher_score", sa.Float(), nullable=True),
        sa.Column("hub_score", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(10), nullable=True),
        sa.UniqueConstraint("device", "boot", "seq", name="uq_snippets_device_boot_seq"),
    )


def downgrade() -> None:
    op.drop_table("snippets")
    op.drop_table("statuses")
    op.drop_index("ix_events_device_received", table_name="events")
    op.drop_table("events")
    op.drop_table("devices")
