"""Database models and sessions. Alembic migrations are the only source of the schema."""
