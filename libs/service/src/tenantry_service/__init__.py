"""A service's process set-up: the app factory, the runtime, the command line, the worker
and housekeeping. It composes the other libs; nothing below imports it."""
