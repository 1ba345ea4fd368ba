"""The ``k8s.*`` actions: diagnose, restart, scale, delete, unstick and wait on store objects.

All of them talk to the API through `remediator.adapters.kubernetes` only, check namespace and
names against the scope rules before any call (`guarding`), and declare the exact RBAC they use.
"""
