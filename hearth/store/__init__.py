"""State store: SQLAlchemy (SQLite by default, Postgres by URL)."""
