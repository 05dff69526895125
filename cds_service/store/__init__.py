"""What the service keeps: the SQLAlchemy tables and Store (issued cards, feedback, audit rows,
seen token ids; ``database``), a feedback entry's stored row (``feedback_rows``), the group commit
concurrent audit writes share (``group_commit``), the Alembic migrations, and the audit report.

May import protocol, errors and logs.
"""
