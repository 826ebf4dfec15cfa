"""Shared infrastructure: settings-driven database engine and sessions, the ORM tables, the
migrations runner, the blob store, the Celery client and embedded broker, live push, the
registry of live workers, the state-machine mechanism and the domain's errors."""
