"""jitgate's application: settings, ledger, Celery tasks, webhook listener and CLI."""
