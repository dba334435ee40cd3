"""Test fixtures shared by every service and lib (one way to test across the suite).

Registered for the whole repo by the root conftest.py (`pytest_plugins`).
"""
