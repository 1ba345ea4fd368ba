"""Tests of the Kubernetes adapter and the k8s.* / helm.* actions against the emulator."""
