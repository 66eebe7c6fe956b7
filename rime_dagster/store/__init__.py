"""Rime's metadata store: SQLAlchemy models, engine/session handling and Alembic migrations."""
