"""The customer-facing audit log (issue 19 §3): entries.py has the rules, store.py the
table, consumer.py the writer and retention, api.py the routes."""
