"""The kustomize HA overlay: several replicas on PostgreSQL, rendered for real.

``kubectl kustomize deploy/kustomize/ha`` must give the base with exactly the HA differences
(replicas, rolling updates, spread, the budget, the database Secrets instead of the state
claim, egress to the database) and a config remediator's own loader accepts, naming the Lease
the Role grants and the files the Deployment mounts.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from remediator import config
from tests.deploy import manifests, rbac

HA = manifests.REPO / "deploy" / "kustomize" / "ha"
KUBERNETES_VERSION = "1.30.0"
DATABASE_MOUNT = "/var/run/secrets/remediator-database"


def ha_docs() -> list[manifests.Doc]:
    return manifests.kustomize_docs(HA)


def base_docs() -> list[manifests.Doc]:
    return manifests.kustomize_docs()


def by_id(docs: list[manifests.Doc]) -> dict[str, manifests.Doc]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def ha_config() -> dict[str, Any]:
    loaded = yaml.safe_load(manifests.config_map(ha_docs())["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def pod_spec(docs: list[manifests.Doc]) -> dict[str, Any]:
    spec = manifests.find(docs, "Deployment")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def test_renders_the_base_without_the_state_claim() -> None:
    base = {key for key in by_id(base_docs()) if not key.startswith("ConfigMap/remediator-config")}
    ha = {key for key in by_id(ha_docs()) if not key.startswith("ConfigMap/remediator-config")}
    assert base - ha == {"PersistentVolumeClaim/remediator-state"}
    assert ha - base == set()
    assert not [d for d in ha_docs() if d["kind"] == "Secret"], "no password is shipped"


@pytest.mark.parametrize("object_id", sorted(by_id(ha_docs())))
def test_object_validates_strictly(object_id: str) -> None:
    kubernetes_validate.validate(by_id(ha_docs())[object_id], KUBERNETES_VERSION, strict=True)


def test_only_the_ha_objects_differ_from_the_base() -> None:
    """RBAC (the Lease's Role included), Service, admission policy and the rest: unchanged."""
    base, ha = by_id(base_docs()), by_id(ha_docs())
    patched = ("Deployment", "PodDisruptionBudget", "NetworkPolicy")
    changed = {f"{kind}/remediator" for kind in patched}
    for key, doc in ha.items():
        if key in changed or key.startswith("ConfigMap/remediator-config"):
            continue
        assert doc == base[key], key


def test_the_config_loads_with_remediators_loader(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(manifests.config_map(ha_docs())["data"]["config.yaml"], encoding="utf-8")
    settings = config.load(path)
    assert config.is_postgres_url(settings.state.path)
    url = urlsplit(settings.state.path)
    assert url.password is None, "the password is in a file, never in the URL"
    assert url.username == "remediator"
    query = parse_qs(url.query)
    assert query["sslmode"] == ["verify-full"]
    assert settings.state.password_file == f"{DATABASE_MOUNT}/password"
    assert query["sslrootcert"] == [f"{DATABASE_MOUNT}/ca.crt"]
    assert settings.ha.replica_id is None, "one ConfigMap for every replica: each names itself"
    assert settings.ha.leader_election == "auto"
    assert settings.kubernetes.enabled, "auto elects through the Kubernetes Lease"
    assert not settings.auth.insecure_no_auth


def test_the_config_is_the_base_config_on_postgresql() -> None:
    base = yaml.safe_load((manifests.KUSTOMIZE_BASE / "config.yaml").read_text(encoding="utf-8"))
    ha = ha_config()
    assert {k: v for k, v in ha.items() if k not in {"state", "ha"}} == {
        k: v for k, v in base.items() if k not in {"state", "ha"}
    }
    assert set(ha["state"]) - set(base["state"]) == {"password_file"}
    assert {k: v for k, v in ha["state"].items() if k not in {"path", "password_file"}} == {
        k: v for k, v in base["state"].items() if k != "path"
    }
    named = {"lease_name", "lease_namespace"}
    assert {k: v for k, v in ha["ha"].items() if k not in named} == base["ha"]
    # The files where the chart mounts them on PostgreSQL (its managed config's branch).
    chart = manifests.managed_config(keep_conditional=True)
    assert ha["state"]["password_file"] == chart["state"]["password_file"]
    assert set(ha["ha"]) - set(base["ha"]) == set(chart["ha"]) == named


def test_the_lease_it_elects_on_is_the_one_the_role_grants() -> None:
    docs = ha_docs()
    role = manifests.find(docs, "Role")
    granted = rbac.rules_by_role(docs)["leader_lease"]
    settings = config.from_mapping(ha_config())
    assert [rule["resourceNames"] for rule in granted] == [[settings.ha.lease_name]]
    assert settings.ha.lease_namespace == role["metadata"]["namespace"]
    deployment = manifests.find(docs, "Deployment")
    assert settings.ha.lease_namespace == deployment["metadata"]["namespace"]


def test_deployment_runs_several_replicas_safely() -> None:
    docs = ha_docs()
    deployment = manifests.find(docs, "Deployment")
    assert manifests.deployment_problems(deployment, ha_config()) == []
    assert deployment["spec"]["replicas"] == 3
    # Everything else about the pod is the base's.
    ha_pod, base_pod = copy.deepcopy(pod_spec(docs)), copy.deepcopy(pod_spec(base_docs()))
    for pod in (ha_pod, base_pod):
        pod.pop("topologySpreadConstraints", None)
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in {"state", "database"}]
        for volume in pod["volumes"]:
            if volume["name"] == "config":
                volume["configMap"].pop("name")
        (container,) = pod["containers"]
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["name"] not in {"state", "database"}
        ]
    assert ha_pod == base_pod


def test_the_database_secrets_are_mounted_read_only_key_by_key() -> None:
    pod = pod_spec(ha_docs())
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["database"] == {
        "name": "database",
        "mountPath": DATABASE_MOUNT,
        "readOnly": True,
    }
    (volume,) = [v for v in pod["volumes"] if v["name"] == "database"]
    projected = volume["projected"]
    assert projected["defaultMode"] == 0o440
    files = {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in projected["sources"]
        for item in source["secret"]["items"]
    }
    # Only the password and the CA certificate: never the CA's private key beside it.
    assert files == {
        "password": ("remediator-db-app", "password"),
        "ca.crt": ("remediator-db-ca", "ca.crt"),
    }
    settings = config.from_mapping(ha_config())
    assert settings.state.password_file is not None
    assert Path(settings.state.password_file).relative_to(DATABASE_MOUNT) == Path("password")


def test_replicas_spread_over_nodes_and_zones_as_the_chart_does() -> None:
    docs = ha_docs()
    pod = pod_spec(docs)
    pod_labels = manifests.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    values = manifests.values()["topologySpread"]
    expected = {
        "kubernetes.io/hostname": values["hostname"],
        "topology.kubernetes.io/zone": values["zone"],
    }
    constraints = pod["topologySpreadConstraints"]
    assert {c["topologyKey"]: c["whenUnsatisfiable"] for c in constraints} == expected
    for constraint in constraints:
        assert constraint["maxSkew"] == values["maxSkew"]
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_the_budget_keeps_one_replica_through_drains() -> None:
    docs = ha_docs()
    pdb = manifests.find(docs, "PodDisruptionBudget")
    pod_labels = manifests.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == manifests.values()["podDisruptionBudget"]["minAvailable"]
    assert pdb["spec"]["minAvailable"] == 1 < manifests.find(docs, "Deployment")["spec"]["replicas"]
    assert "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_egress_adds_the_database_and_nothing_else() -> None:
    base = manifests.find(base_docs(), "NetworkPolicy")["spec"]
    ha = manifests.find(ha_docs(), "NetworkPolicy")["spec"]
    assert {k: v for k, v in ha.items() if k != "egress"} == {
        k: v for k, v in base.items() if k != "egress"
    }
    *kept, database = ha["egress"]
    assert kept == base["egress"]
    port = urlsplit(config.from_mapping(ha_config()).state.path).port
    assert database["ports"] == [{"port": port, "protocol": "TCP"}]
    assert database["ports"] == manifests.values()["networkPolicy"]["database"]["ports"]
    # The CloudNativePG Cluster's instances, whichever is the primary.
    cluster_pods = {"matchLabels": {"cnpg.io/cluster": "remediator-db"}}
    assert database["to"] == [{"podSelector": cluster_pods}]
    host = urlsplit(config.from_mapping(ha_config()).state.path).hostname
    assert host == "remediator-db-rw.remediator.svc"


# deploy/README.md, "High availability": its examples are what the chart and overlay accept.


def readme_examples() -> list[dict[str, Any]]:
    text = (manifests.REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## High availability", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)]
    assert all(isinstance(b, dict) for b in blocks)
    return blocks


def chart_examples() -> list[dict[str, Any]]:
    return [b for b in readme_examples() if "replicaCount" in b]


@pytest.mark.parametrize("example", range(2))
def test_the_readmes_chart_values_pass_the_schema_and_the_loader(example: int) -> None:
    values = chart_examples()[example]
    schema = json.loads((manifests.CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(manifests.merged(manifests.values(), values))
    assert values["replicaCount"] > 1
    settings = config.from_mapping({"state": {"path": values["database"]["url"]}})
    assert config.is_postgres_url(settings.state.path)
    sslrootcert = parse_qs(urlsplit(settings.state.path).query)["sslrootcert"]
    assert sslrootcert == [f"{DATABASE_MOUNT}/ca.crt"], "where the chart mounts caSecret"


def test_the_readmes_cloudnativepg_example_is_what_the_overlay_connects_to() -> None:
    (cluster,) = [b for b in readme_examples() if b.get("kind") == "Cluster"]
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    (values,) = [v for v in chart_examples() if "cnpg" in json.dumps(v)]
    database = values["database"]
    assert database["existingSecret"] == f"{name}-app"
    assert database["caSecret"] == f"{name}-ca"
    assert urlsplit(database["url"]).hostname == f"{name}-rw.{namespace}.svc"
    owner = cluster["spec"]["bootstrap"]["initdb"]
    assert urlsplit(database["url"]).username == owner["owner"]
    assert urlsplit(database["url"]).path == f"/{owner['database']}"
    # The overlay: the same URL, Secrets and database pods.
    assert database["url"] == ha_config()["state"]["path"]
    (volume,) = [v for v in pod_spec(ha_docs())["volumes"] if v["name"] == "database"]
    secrets = [source["secret"]["name"] for source in volume["projected"]["sources"]]
    assert secrets == [database["existingSecret"], database["caSecret"]]
    *_, egress = manifests.find(ha_docs(), "NetworkPolicy")["spec"]["egress"]
    assert egress["to"] == values["networkPolicy"]["database"]["to"]
