"""Alembic environment and revisions for the control plane's database (the only way the schema
changes). Driven in code by `lorafleet.controlplane.db.migrate`: there is no alembic.ini."""
