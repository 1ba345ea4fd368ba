"""The three patch dialects as pure functions: RFC 7386, strategic merge, RFC 6902."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from remediator.simulation.kubeapi import patching

POD_SPEC: dict[str, Any] = {
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "web:1",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "ports": [{"containerPort": 80, "name": "http"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            },
            {"name": "sidecar", "image": "sidecar:1"},
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "tolerations": [{"key": "a"}],
    },
    "metadata": {"finalizers": ["a.example.com/x"], "labels": {"app": "web"}},
}


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "list": [3], "new": {"x": 1}}
    result = patching.merge_patch(target, patch)
    assert result == {"a": "z", "c": {"d": "e"}, "list": [3], "new": {"x": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]}, "input untouched"


def test_strategic_merges_containers_by_name_and_env_by_name() -> None:
    original = copy.deepcopy(POD_SPEC)
    patch = {
        "spec": {
            "containers": [
                {"name": "web", "image": "web:2", "env": [{"name": "B", "value": "20"}]},
                {"name": "debug", "image": "busybox"},
            ]
        }
    }
    result = patching.strategic_merge_patch(original, patch)
    containers = result["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web", "sidecar", "debug"]
    assert containers[0]["image"] == "web:2"
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "20"}]
    assert containers[0]["ports"] == [{"containerPort": 80, "name": "http"}]
    assert original == POD_SPEC, "input untouched"


def test_strategic_delete_and_replace_directives() -> None:
    patch = {
        "spec": {
            "containers": [
                {"name": "sidecar", "$patch": "delete"},
                {"name": "web", "env": [{"name": "A", "$patch": "delete"}]},
            ],
            "volumes": [{"name": "cache", "emptyDir": {}}, {"$patch": "replace"}],
        }
    }
    result = patching.strategic_merge_patch(POD_SPEC, patch)
    assert [c["name"] for c in result["spec"]["containers"]] == ["web"]
    assert result["spec"]["containers"][0]["env"] == [{"name": "B", "value": "2"}]
    assert result["spec"]["volumes"] == [{"name": "cache", "emptyDir": {}}]


def test_strategic_map_replace_and_delete() -> None:
    patch = {
        "metadata": {"labels": {"$patch": "replace", "tier": "db"}},
        "spec": {"$patch": "delete"},
    }
    result = patching.strategic_merge_patch(POD_SPEC, patch)
    assert result["metadata"]["labels"] == {"tier": "db"}
    assert "spec" not in result


@pytest.mark.parametrize(
    ("path", "patch_list", "expected"),
    [
        (("ports",), [{"containerPort": 80, "protocol": "TCP"}],
         [{"containerPort": 80, "name": "http", "protocol": "TCP"}]),
        (("volumeMounts",), [{"name": "other", "mountPath": "/data", "readOnly": True}],
         [{"name": "other", "mountPath": "/data", "readOnly": True}]),
    ],
    ids=["container-ports-by-containerPort", "volume-mounts-by-mountPath"],
)  # fmt: skip
def test_strategic_container_list_keys(
    path: tuple[str, ...], patch_list: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    patch = {"spec": {"containers": [{"name": "web", path[0]: patch_list}]}}
    result = patching.strategic_merge_patch(POD_SPEC, patch)
    assert result["spec"]["containers"][0][path[0]] == expected


def test_strategic_lists_without_merge_key_are_replaced() -> None:
    result = patching.strategic_merge_patch(POD_SPEC, {"spec": {"tolerations": [{"key": "b"}]}})
    assert result["spec"]["tolerations"] == [{"key": "b"}]


def test_strategic_service_ports_merge_by_port() -> None:
    service = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    result = patching.strategic_merge_patch(
        service, {"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}
    )
    assert result["spec"]["ports"] == [
        {"port": 80, "name": "http"},
        {"port": 443, "name": "https", "targetPort": 8443},
    ]


def test_strategic_conditions_merge_by_type() -> None:
    status = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Synced", "status": "True"},
            ]
        }
    }
    result = patching.strategic_merge_patch(
        status, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "False"},
        {"type": "Synced", "status": "True"},
    ]


def test_strategic_finalizers_are_a_merged_set() -> None:
    added = patching.strategic_merge_patch(
        POD_SPEC, {"metadata": {"finalizers": ["b.example.com/y"]}}
    )
    assert added["metadata"]["finalizers"] == ["a.example.com/x", "b.example.com/y"]
    removed = patching.strategic_merge_patch(
        added, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.example.com/x"]}}
    )
    assert removed["metadata"]["finalizers"] == ["b.example.com/y"]


def test_strategic_retain_keys() -> None:
    strategy = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert patching.strategic_merge_patch(strategy, patch)["spec"]["strategy"] == {
        "type": "Recreate"
    }


def test_strategic_requires_the_merge_key() -> None:
    with pytest.raises(patching.PatchError, match="merge key"):
        patching.strategic_merge_patch(POD_SPEC, {"spec": {"containers": [{"image": "x"}]}})


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2, 3]}, "c": "d", "e/f": 1, "g~h": 2}
    ops = [
        {"op": "add", "path": "/a/b/-", "value": 4},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "remove", "path": "/a/b/1"},
        {"op": "replace", "path": "/c", "value": "D"},
        {"op": "move", "from": "/c", "path": "/moved"},
        {"op": "copy", "from": "/a/b", "path": "/copied"},
        {"op": "test", "path": "/e~1f", "value": 1},
        {"op": "remove", "path": "/g~0h"},
    ]
    result = patching.json_patch(doc, ops)
    assert result == {"a": {"b": [0, 2, 3, 4]}, "moved": "D", "copied": [0, 2, 3, 4], "e/f": 1}
    assert doc["c"] == "d", "input untouched"


@pytest.mark.parametrize(
    ("ops", "error"),
    [
        ([{"op": "test", "path": "/a", "value": 2}], patching.PatchFailedError),
        ([{"op": "test", "path": "/t", "value": 1}], patching.PatchFailedError),
        ([{"op": "remove", "path": "/missing"}], patching.PatchFailedError),
        ([{"op": "replace", "path": "/missing", "value": 1}], patching.PatchFailedError),
        ([{"op": "add", "path": "/x/y", "value": 1}], patching.PatchFailedError),
        ([{"op": "frobnicate", "path": "/a"}], patching.PatchError),
        ([{"path": "/a"}], patching.PatchError),
        ({"op": "add"}, patching.PatchError),
    ],
    ids=["test-mismatch", "test-true-is-not-1", "remove-missing", "replace-missing",
         "add-without-parent", "unknown-op", "no-op", "not-a-list"],
)  # fmt: skip
def test_json_patch_failures(ops: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        patching.json_patch({"a": 1, "t": True}, ops)


def test_json_patch_is_atomic() -> None:
    doc = {"a": 1}
    with pytest.raises(patching.PatchFailedError):
        patching.json_patch(
            doc, [{"op": "replace", "path": "/a", "value": 2}, {"op": "remove", "path": "/b"}]
        )
    assert doc == {"a": 1}
