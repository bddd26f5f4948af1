"""The store: SQLAlchemy rows, transactions with the change feed, migrations."""
