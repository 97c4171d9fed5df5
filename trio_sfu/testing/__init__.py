"""Helpers for tests that need real clients: a private network namespace to run them in."""
