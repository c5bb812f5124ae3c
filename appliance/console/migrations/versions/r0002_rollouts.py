"""Releases, rollouts and each device's part in one.

Revision ID: r0002
Revises: r0001
"""

import sqlalchemy as sa
from alembic import op

revision = 'r0002'
down_revision = 'r0001'


def upgrade() -> None:
    op.create_table('releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('targets', sa.JSON(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('group', sa.String(length=64), nullable=False),
    sa.Column('waves', sa.JSON(), nullable=False),
    sa.Column('wave', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('failure_threshold', sa.Double(), nullable=False),
    sa.Column('deadline_s', sa.Integer(), nullable=False),
    sa.Column('approval', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_group'), ['group'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollouts_release_id'), ['release_id'], unique=False)

    op.create_table('rollout_devices',
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('wave', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('previous', sa.JSON(), nullable=False),
    sa.Column('assigned', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('rollout_id', 'device_id')
    )
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_devices_device_id'), ['device_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_devices_device_id'))

    op.drop_table('rollout_devices')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_release_id'))
        batch_op.drop_index(batch_op.f('ix_rollouts_group'))

    op.drop_table('rollouts')
    op.drop_table('releases')
