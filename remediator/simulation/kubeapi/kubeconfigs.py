"""Kubeconfig files pointing kubectl or kubernetes_asyncio at an emulator (plain HTTP)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "emulator"


def write_kubeconfig(
    path: str | os.PathLike[str],
    url: str,
    *,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a single-context kubeconfig for ``url``; returns the path.

    The file holds a bearer token when one is given, so it is created owner-readable only.
    """
    user: dict[str, Any] = {"token": token} if token is not None else {}
    context: dict[str, Any] = {"cluster": CONTEXT, "user": CONTEXT}
    if namespace is not None:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [{"name": CONTEXT, "context": context}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    target = Path(path)
    target.touch(mode=0o600)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target
