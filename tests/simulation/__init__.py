"""Tests of the simulated infrastructure (the in-memory Kubernetes API)."""
