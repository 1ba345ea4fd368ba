"""The HTTP surface: Alertmanager intake, health, metrics and the operator review API."""
