"""Simulated infrastructure for tests and demos: things we cannot install here, emulated."""
