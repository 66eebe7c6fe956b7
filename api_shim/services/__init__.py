"""Domain logic of the Rime API: plain functions over a SQLAlchemy session, no FastAPI imports."""
