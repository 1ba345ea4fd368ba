"""Just enough of Kubernetes' protobuf encoding to read a ``SelfSubjectAccessReview``.

client-go's typed clients (``kubectl auth can-i``) send built-in kinds as
``application/vnd.kubernetes.protobuf``: the bytes ``k8s\\0``, then a ``runtime.Unknown``
whose field 2 (``raw``) holds the object's own message. Only length-delimited fields and
varints occur in what is read here; field numbers are those of ``k8s.io/api/authorization/v1
/generated.proto``.
"""

from __future__ import annotations

from typing import Any

from remediator.simulation.kubeapi import errors

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"
_RESOURCE_ATTRIBUTES = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
_NON_RESOURCE_ATTRIBUTES = ("path", "verb")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise errors.bad_request("truncated protobuf varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def fields(data: bytes) -> dict[int, bytes]:
    """Field number → the last length-delimited value (varints, fixed ones are skipped)."""
    found: dict[int, bytes] = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            found[number] = data[position : position + length]
            position += length
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise errors.bad_request(f"unsupported protobuf wire type {wire}")
    return found


def _strings(data: bytes, names: tuple[str, ...]) -> dict[str, str]:
    values = fields(data)
    return {
        name: values[number].decode() for number, name in enumerate(names, 1) if number in values
    }


def self_subject_access_review(body: bytes) -> dict[str, Any]:
    """The review's ``spec`` as JSON would carry it."""
    if not body.startswith(_MAGIC):
        raise errors.bad_request("protobuf body without the k8s envelope")
    raw = fields(body[len(_MAGIC) :]).get(2, b"")
    spec = fields(fields(raw).get(2, b""))
    decoded: dict[str, Any] = {}
    if 1 in spec:
        decoded["resourceAttributes"] = _strings(spec[1], _RESOURCE_ATTRIBUTES)
    if 2 in spec:
        decoded["nonResourceAttributes"] = _strings(spec[2], _NON_RESOURCE_ATTRIBUTES)
    return {"spec": decoded}
