"""All I/O of the daemon: Kubernetes, Prometheus, playbook loading, auditing, probing, metrics."""
