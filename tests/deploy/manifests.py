"""Reading the deployment manifests without a cluster or a helm binary.

The kustomize base is rendered for real (``kubectl kustomize``). The chart's templates cannot
be: there is no helm here. :func:`skeleton` reads a template the way a reviewer would, with
every branch taken: lines that only hold template actions are dropped, and each remaining
``{{ ... }}`` becomes a placeholder, or the value itself for a plain ``{{ .Values.a.b }}``.
That keeps the literal parts (security contexts, probes, mounts, RBAC rules) checkable as
YAML; the templates are kept simple enough for this to hold.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from remediator import config as remediator_config

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm-charts" / "remediator"
TEMPLATES = CHART / "templates"
KUSTOMIZE_BASE = REPO / "deploy" / "kustomize" / "base"
PLAYBOOKS = REPO / "playbooks"
ALERTS = REPO / "alerts"

PLACEHOLDER = "TEMPLATED"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the pod's listen address; the NetworkPolicy guards it
COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.DOTALL)
ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
ACTIONS_ONLY = re.compile(r"^\s*(\{\{.*?\}\}\s*)+$")
PLAIN_VALUE = re.compile(r"^\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)$")
BLOCK_START = re.compile(r"\{\{-?\s*(if|range|with|define)\b")
BLOCK_ELSE = re.compile(r"\{\{-?\s*else\b")
BLOCK_END = re.compile(r"\{\{-?\s*end\s*-?\}\}")
BLOCK_TAG = re.compile(r"\{\{-?\s*(if|range|with|define|else\s+if|else|end)\b")

Doc = dict[str, Any]


@functools.cache
def values() -> Doc:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def lookup(mapping: Mapping[str, Any], dotted: str) -> Any:
    """``mapping["a"]["b"]`` for ``"a.b"``; ``KeyError`` naming the path when absent."""
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def skeleton(
    text: str, *, keep_conditional: bool = True, chart_values: Mapping[str, Any] | None = None
) -> str:
    """The template as YAML text, every branch taken (or, with ``keep_conditional=False``, only
    what is outside any block or in the plain ``else`` branch of an ``if``: where a template's
    conditions are all false by default, as in ``remediator.managedConfig``, that is what the
    chart's defaults render)."""
    substitute = functools.partial(_substitute, chart_values=chart_values)
    text = COMMENT.sub("", text)
    out: list[str] = []
    # One entry per open block: whether its current branch is a plain `else`.
    in_else: list[bool] = []
    for line in text.splitlines():
        if (keep_conditional or all(in_else)) and not ACTIONS_ONLY.match(line):
            out.append(ACTION.sub(substitute, line))
        for tag in BLOCK_TAG.findall(line):
            if tag == "end":
                in_else.pop()
            elif tag == "else":
                in_else[-1] = True
            elif tag.startswith("else"):  # `else if`: a condition again
                in_else[-1] = False
            else:
                in_else.append(False)
    return "\n".join(out) + "\n"


def _substitute(match: re.Match[str], *, chart_values: Mapping[str, Any] | None = None) -> str:
    expression = match.group(1)
    plain = PLAIN_VALUE.match(expression)
    if plain is not None:
        try:
            value = lookup(
                values() if chart_values is None else chart_values, plain.group(1).lstrip(".")
            )
        except KeyError:
            return PLACEHOLDER
        # Unquoted: the action may sit inside a quoted YAML string.
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return json.dumps(value)
    return PLACEHOLDER


def template_docs(name: str) -> list[Doc]:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(skeleton(text)) if d is not None]


def define_block(text: str, name: str) -> str:
    """The body of ``{{- define "name" -}} ... {{- end }}`` in a helpers file."""
    start = re.search(r"\{\{-?\s*define\s+\"" + re.escape(name) + r"\"\s*-?\}\}\n", text)
    assert start is not None, f"no define {name!r}"
    depth = 1
    position = start.end()
    for tag in re.finditer(r"\{\{-?\s*(if|range|with|define|end)\b[^}]*\}\}", text[position:]):
        depth += -1 if tag.group(1) == "end" else 1
        if depth == 0:
            return text[position : position + tag.start()]
    raise AssertionError(f"define {name!r} is not closed")


def managed_config(*, keep_conditional: bool) -> Doc:
    """The config keys the chart sets from the pod layout (``remediator.managedConfig``)."""
    helpers = (TEMPLATES / "_helpers.tpl").read_text(encoding="utf-8")
    body = skeleton(
        define_block(helpers, "remediator.managedConfig"), keep_conditional=keep_conditional
    )
    loaded = yaml.safe_load(body)
    assert isinstance(loaded, dict)
    return loaded


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> Doc:
    """Sprig's ``mustMergeOverwrite``: nested mappings merged, ``override`` wins."""
    result: Doc = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def chart_default_config() -> Doc:
    """config.yaml as the chart renders it with the default values."""
    return merged(values()["config"], managed_config(keep_conditional=False))


@functools.cache
def kustomize_text(directory: Path = KUSTOMIZE_BASE) -> str:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def kustomize_docs(directory: Path = KUSTOMIZE_BASE) -> list[Doc]:
    return [d for d in yaml.safe_load_all(kustomize_text(directory)) if d is not None]


def config_map(docs: list[Doc]) -> Doc:
    """The kustomize rendering's config ConfigMap (hash-suffixed, so found by its prefix)."""
    (found,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("remediator-config-")
    ]
    return found


def find(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    found = [
        d for d in docs if d["kind"] == kind and str(d["metadata"]["name"]).endswith(name_suffix)
    ]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {len(found)}"
    return found[0]


def repo_files(directory: Path, *patterns: str) -> dict[str, str]:
    """File name → text for the files matching ``patterns`` (none when the directory is absent)."""
    if not directory.is_dir():
        return {}
    return {
        path.name: path.read_text(encoding="utf-8")
        for pattern in patterns
        for path in sorted(directory.glob(pattern))
        if path.is_file()
    }


def deployment_problems(deployment: Doc, config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the pod spec for running remediator with ``config``, as messages."""
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    shared = remediator_config.is_postgres_url(config["state"]["path"])
    if shared:
        expect(spec["strategy"] == {"type": "RollingUpdate"}, "strategy RollingUpdate (shared)")
    else:
        expect(spec["replicas"] == 1, "one replica: the SQLite state has a single writer")
        expect(spec["strategy"] == {"type": "Recreate"}, "strategy Recreate (one writer)")
    selector, labels = spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]
    if selector is not None and labels is not None:  # a chart skeleton has neither
        expect(selector.items() <= labels.items(), "the selector must match the pod labels")
    pod_security = pod["securityContext"]
    expect(pod_security.get("runAsNonRoot") is True, "pod runAsNonRoot")
    expect(pod_security.get("runAsUser") == 10001, "pod runAsUser 10001 (the image's user)")
    expect(pod_security.get("fsGroup") == 10001, "fsGroup 10001, so the state volume is writable")
    expect(pod_security.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod seccomp")
    grace = pod["terminationGracePeriodSeconds"]
    expect(
        isinstance(grace, int) and grace > config["engine"]["grace_period"],
        f"terminationGracePeriodSeconds {grace} must exceed engine.grace_period",
    )
    (container,) = pod["containers"]
    security = container["securityContext"]
    expect(security.get("runAsNonRoot") is True, "container runAsNonRoot")
    expect(security.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    expect(security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    expect(security.get("capabilities") == {"drop": ["ALL"]}, "drop ALL capabilities")
    expect(security.get("seccompProfile") == {"type": "RuntimeDefault"}, "container seccomp")
    expect(
        container["args"] == ["serve", "--config", "/etc/remediator/config.yaml"],
        "args: the Dockerfile's CMD",
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expect(ports == {"http": config["server"]["port"]}, "containerPort http = server.port")
    expect(config["server"]["host"] == ALL_INTERFACES, "listen on all interfaces inside the pod")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        expect(
            container[probe]["httpGet"] == {"path": path, "port": "http"},
            f"{probe} on {path}",
        )
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    expect(set(mounts) <= set(volumes), "every mount has a volume")
    expect(
        mounts["config"]["mountPath"] == "/etc/remediator/config.yaml"
        and mounts["config"].get("subPath") == "config.yaml",
        "config.yaml mounted where CMD reads it",
    )
    expect("configMap" in volumes["config"], "config from a ConfigMap")
    expect(
        mounts["playbooks"]["mountPath"] == config["playbooks"]["directory"],
        "playbooks mounted at playbooks.directory",
    )
    expect("configMap" in volumes["playbooks"], "playbooks from a ConfigMap")
    expect(
        str(Path(config["auth"]["token_file"]).parent) == mounts["token"]["mountPath"],
        "auth.token_file inside the token mount",
    )
    expect("secret" in volumes["token"], "token from a Secret")
    if shared:
        expect("state" not in mounts and "state" not in volumes, "no state volume (PostgreSQL)")
    else:
        expect(
            str(Path(config["state"]["path"]).parent) == mounts["state"]["mountPath"],
            "state.path inside the state mount",
        )
        expect(
            "persistentVolumeClaim" in volumes["state"] or "emptyDir" in volumes["state"],
            "state on a PVC or an emptyDir",
        )
    expect(mounts["tmp"]["mountPath"] == "/tmp", "a writable /tmp")
    expect("emptyDir" in volumes["tmp"], "/tmp is an emptyDir")
    writable = {name for name, mount in mounts.items() if not mount.get("readOnly")}
    wanted = {"tmp"} if shared else {"state", "tmp"}
    expect(writable == wanted, f"only {sorted(wanted)} writable, not {sorted(writable)}")
    return problems
