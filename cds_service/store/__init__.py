"""What the service keeps: the SQLAlchemy tables and Store (issued cards, feedback, audit rows,
seen token ids), the Alembic migrations, and the audit report.

May import protocol, errors and logs.
"""
