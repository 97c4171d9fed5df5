"""Helpers for tests: a private network namespace for real clients (`netns`), and an in-memory
network that runs real servers and our client under Trio's MockClock (`memory_network`)."""
