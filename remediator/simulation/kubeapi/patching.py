"""The three PATCH dialects the API server speaks: JSON merge, strategic merge, JSON patch.

Pure functions over JSON values. They never mutate their inputs, so the emulator can diff the
result against the stored object. `PatchError` is a malformed patch (400), `PatchFailedError`
an operation that cannot apply (422), as the real server distinguishes them.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping, Sequence
from typing import Any


class PatchType(enum.StrEnum):
    JSON = "application/json-patch+json"
    MERGE = "application/merge-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"


class PatchError(ValueError):
    """The patch document itself is malformed."""


class PatchFailedError(PatchError):
    """A well-formed JSON patch whose operation failed (e.g. a ``test`` mismatch)."""


def apply_patch(target: dict[str, Any], patch: Any, patch_type: PatchType) -> dict[str, Any]:
    match patch_type:
        case PatchType.MERGE:
            if not isinstance(patch, dict):
                raise PatchError("a merge patch must be a JSON object")
            result = merge_patch(target, patch)
        case PatchType.STRATEGIC:
            if not isinstance(patch, dict):
                raise PatchError("a strategic merge patch must be a JSON object")
            result = strategic_merge_patch(target, patch)
        case PatchType.JSON:
            result = json_patch(target, patch)
    if not isinstance(result, dict):
        raise PatchFailedError("the patched document is not a JSON object")
    return result


# --- RFC 7386 ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge --------------------------------------------------------------------------

# Merge keys from the Kubernetes Go types' `patchMergeKey` tags, matched against the tail of the
# path of map keys leading to the list. Longer suffixes first: container ports merge by
# containerPort while Service ports merge by port.
_MERGE_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("containers", "ports"), "containerPort"),
    (("initContainers", "ports"), "containerPort"),
    (("ephemeralContainers", "ports"), "containerPort"),
    (("spec", "ports"), "port"),
    (("containers",), "name"),
    (("initContainers",), "name"),
    (("ephemeralContainers",), "name"),
    (("volumes",), "name"),
    (("env",), "name"),
    # Real Kubernetes merges volumeMounts by mountPath, not by name.
    (("volumeMounts",), "mountPath"),
    (("volumeDevices",), "devicePath"),
    (("imagePullSecrets",), "name"),
    (("resourceClaims",), "name"),
    (("hostAliases",), "ip"),
    (("conditions",), "type"),
    (("ownerReferences",), "uid"),
)

# Lists of scalars with `patchStrategy:"merge"`: the patch adds to the set instead of replacing.
_MERGED_SCALAR_LISTS: tuple[tuple[str, ...], ...] = (("metadata", "finalizers"),)

_DELETE = object()


def _merge_key(path: tuple[str, ...]) -> str | None:
    for suffix, key in _MERGE_KEYS:
        if path[-len(suffix) :] == suffix:
            return key
    return None


def strategic_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Kubernetes strategic merge for built-in types.

    Lists with a known merge key are merged item by item (``$patch: delete`` removes an item,
    ``$patch: replace`` replaces the list); ``$patch: replace``/``delete`` work on maps;
    ``$retainKeys`` and ``$deleteFromPrimitiveList/<field>`` are honoured; ``$setElementOrder``
    is accepted and ignored. Other lists are replaced, as for any field without a patch strategy.
    """
    merged = _merge_map(dict(target), patch, ())
    if merged is _DELETE:
        return {}
    assert isinstance(merged, dict)  # noqa: S101 - _merge_map returns a dict or _DELETE
    return merged


def _merge_map(original: Mapping[str, Any], patch: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch", "merge")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _clean({k: v for k, v in patch.items() if k != "$patch"})
    if directive != "merge":
        raise PatchError(f"unknown $patch directive {directive!r} at {'.'.join(path) or '.'}")

    result = copy.deepcopy(dict(original))
    deletions: list[tuple[str, Any]] = []
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            deletions.append((key.partition("/")[2], value))
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        existing = result.get(key)
        if isinstance(value, dict):
            merged = _merge_map(existing if isinstance(existing, dict) else {}, value, sub)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(existing if isinstance(existing, list) else [], value, sub)
        else:
            result[key] = value

    for field, doomed in deletions:
        if not isinstance(doomed, list):
            raise PatchError(f"$deleteFromPrimitiveList/{field} must be a list")
        if isinstance(result.get(field), list):
            result[field] = [item for item in result[field] if item not in doomed]

    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError("$retainKeys must be a list")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [_clean(item) for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    if path[-2:] in _MERGED_SCALAR_LISTS:
        result = copy.deepcopy(original)
        result.extend(item for item in patch if item not in original)
        return result

    key = _merge_key(path)
    if key is None:
        return [_clean(item) for item in patch]

    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"{'.'.join(path)}: expected objects with merge key {key!r}")
        if key not in item:
            raise PatchError(f"{'.'.join(path)}: item does not contain declared merge key {key!r}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            result = [
                old for old in result if not (isinstance(old, dict) and old.get(key) == item[key])
            ]
            continue
        if index is None:
            result.append(_merge_map({}, item, path))
        else:
            result[index] = _merge_map(result[index], item, path)
    return result


def _clean(value: Any) -> Any:
    """Strip directives from a value that replaces rather than merges."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


# --- RFC 6902 ---------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchError(f"JSON pointer must be a string, not {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _index(container: list[Any], segment: str, *, allow_end: bool) -> int:
    if segment == "-" and allow_end:
        return len(container)
    if not segment.isdigit() or (segment != "0" and segment.startswith("0")):
        raise PatchFailedError(f"invalid array index {segment!r}")
    index = int(segment)
    limit = len(container) if allow_end else len(container) - 1
    if index > limit:
        raise PatchFailedError(f"array index {index} out of bounds")
    return index


def _resolve(doc: Any, tokens: Sequence[str]) -> Any:
    current = doc
    for token in tokens:
        if isinstance(current, dict):
            if token not in current:
                raise PatchFailedError(f"path /{'/'.join(tokens)} does not exist")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, allow_end=False)]
        else:
            raise PatchFailedError(f"path /{'/'.join(tokens)} does not exist")
    return current


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchFailedError(f"cannot add to a scalar at /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    if not tokens:
        raise PatchFailedError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchFailedError(f"path /{'/'.join(tokens)} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise PatchFailedError(f"path /{'/'.join(tokens)} does not exist")


def _json_equal(a: Any, b: Any) -> bool:
    # Python's True == 1, JSON's true != 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test; applied atomically to a copy."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise PatchError(f"invalid JSON patch operation {operation!r}")
        op = operation["op"]
        if "path" not in operation:
            raise PatchError(f"JSON patch operation {op!r} has no path")
        tokens = _pointer(operation["path"])
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchError(f"JSON patch operation {op!r} has no value")
        match op:
            case "add":
                doc = _add(doc, tokens, copy.deepcopy(operation["value"]))
            case "remove":
                doc, _ = _remove(doc, tokens)
            case "replace":
                _resolve(doc, tokens)
                if tokens:
                    doc, _ = _remove(doc, tokens)
                doc = _add(doc, tokens, copy.deepcopy(operation["value"]))
            case "move":
                source = _pointer(operation.get("from"))
                if tokens[: len(source)] == source and tokens != source:
                    raise PatchFailedError("cannot move a value into one of its children")
                doc, value = _remove(doc, source)
                doc = _add(doc, tokens, value)
            case "copy":
                value = copy.deepcopy(_resolve(doc, _pointer(operation.get("from"))))
                doc = _add(doc, tokens, value)
            case "test":
                if not _json_equal(_resolve(doc, tokens), operation["value"]):
                    raise PatchFailedError(f"testing value {operation['path']} failed: test failed")
            case _:
                raise PatchError(f"unknown JSON patch operation {op!r}")
    return doc
