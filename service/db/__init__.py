"""Storage: SQLAlchemy 2 models, engine/session set-up and keyword-only data-access functions."""
