"""remediator: Alertmanager webhooks in, audited runbook playbooks out."""

__version__ = "0.1.0"
