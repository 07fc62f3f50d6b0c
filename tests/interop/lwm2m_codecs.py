"""Independent LwM2M content-format codecs for the interop suite.

Written from the protocol notes (lwm2m-notes §f), RFC 8428 (SenML) and RFC 6690 (link format),
never from the daemon's Rust code, so a bug in our Rust codecs cannot hide behind a shared
implementation.

Every decoder returns a flat dict ``{"/3/0/0": "Acme", "/3/0/11/0": 0, ...}`` so values read in
different formats can be compared directly. Canonical Python value per LwM2M type:

=========================  ==========================
String, Corelnk            ``str``
Integer, Unsigned, Time    ``int``
Float                      ``float``
Boolean                    ``bool``
Opaque                     ``bytes``
Objlnk                     ``str`` ``"oid:iid"``
=========================  ==========================

Decoders are strict: malformed input raises a ``CodecError`` subclass, and when the model knows
a resource's type, a value of the wrong type is an error too.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from lwm2m_model import INTEGER_TYPES, Model, format_path, parse_path

# --- content formats -------------------------------------------------------------------------

CF_TEXT = 0
CF_LINK_FORMAT = 40
CF_OPAQUE = 42
CF_CBOR = 60
CF_JSON = 50
CF_SENML_JSON = 110
CF_SENML_CBOR = 112
CF_TLV = 11542
CF_LWM2M_JSON = 11543
CF_LWM2M_CBOR = 11544

#: Content-format name → number (as used in the daemon's ``content_format`` setting).
CF_BY_NAME = {"senml-cbor": CF_SENML_CBOR, "senml-json": CF_SENML_JSON, "tlv": CF_TLV}


class CodecError(ValueError):
    """A payload does not follow its content format."""


class TlvError(CodecError):
    """Malformed TLV."""


class SenmlError(CodecError):
    """Malformed SenML (JSON or CBOR)."""


class TextError(CodecError):
    """Malformed text/plain value."""


class LinkFormatError(CodecError):
    """Malformed CoRE link format."""


# --- typed value helpers ---------------------------------------------------------------------

_OBJLNK_RE = re.compile(r"^(0|[1-9][0-9]{0,4}):(0|[1-9][0-9]{0,4})$")


def _check_objlnk(text: str) -> str:
    m = _OBJLNK_RE.match(text)
    if not m or int(m.group(1)) > 65535 or int(m.group(2)) > 65535:
        raise CodecError(f"not an object link: {text!r}")
    return text


def infer_type(value: Any) -> str:
    """The LwM2M type a Python value would have if the model does not say."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (bytes, bytearray)):
        return "opaque"
    if isinstance(value, str):
        return "string"
    raise TypeError(f"no LwM2M type for {type(value).__name__}")


def _type_for(model: Model | None, path: tuple[int, ...], value: Any = None) -> str | None:
    rtype = model.resource_type(path) if model is not None else None
    if rtype is None and value is not None:
        return infer_type(value)
    return rtype


# --- TLV (11542) -----------------------------------------------------------------------------

TLV_OBJECT_INSTANCE = 0b00
TLV_RESOURCE_INSTANCE = 0b01
TLV_MULTIPLE_RESOURCE = 0b10
TLV_RESOURCE = 0b11

_TLV_KIND_NAMES = {0: "object instance", 1: "resource instance", 2: "multiple resource", 3: "resource"}
# Which element kinds may appear inside which container kind.
_TLV_ALLOWED_CHILDREN = {
    TLV_OBJECT_INSTANCE: {TLV_RESOURCE, TLV_MULTIPLE_RESOURCE},
    TLV_MULTIPLE_RESOURCE: {TLV_RESOURCE_INSTANCE},
}


@dataclass
class TlvElement:
    """One parsed TLV element; ``children`` is set for object instances and multiple resources."""

    kind: int
    id: int
    value: bytes
    children: list[TlvElement] | None = None


def tlv_header(kind: int, ident: int, length: int) -> bytes:
    """The type byte, identifier and length field of one element, in the shortest form."""
    if not 0 <= ident <= 0xFFFF:
        raise ValueError(f"TLV id out of range: {ident}")
    if not 0 <= length <= 0xFFFFFF:
        raise ValueError(f"TLV length out of range: {length}")
    type_byte = kind << 6
    if ident > 0xFF:
        type_byte |= 0x20
        id_bytes = ident.to_bytes(2, "big")
    else:
        id_bytes = bytes([ident])
    if length <= 7:
        type_byte |= length
        len_bytes = b""
    elif length <= 0xFF:
        type_byte |= 0b01 << 3
        len_bytes = length.to_bytes(1, "big")
    elif length <= 0xFFFF:
        type_byte |= 0b10 << 3
        len_bytes = length.to_bytes(2, "big")
    else:
        type_byte |= 0b11 << 3
        len_bytes = length.to_bytes(3, "big")
    return bytes([type_byte]) + id_bytes + len_bytes


def tlv_element(kind: int, ident: int, value: bytes | list[bytes]) -> bytes:
    """Encode one element; a list value is a sequence of already encoded child elements."""
    body = b"".join(value) if isinstance(value, list) else bytes(value)
    return tlv_header(kind, ident, len(body)) + body


def tlv_parse(data: bytes, container: int | None = None) -> list[TlvElement]:
    """Parse a sequence of TLV elements (recursing into containers); strict about lengths."""
    elements: list[TlvElement] = []
    seen: set[tuple[int, int]] = set()
    pos = 0
    while pos < len(data):
        type_byte = data[pos]
        kind = type_byte >> 6
        id_len = 2 if type_byte & 0x20 else 1
        len_type = (type_byte >> 3) & 0b11
        header_end = pos + 1 + id_len + len_type
        if header_end > len(data):
            raise TlvError(f"truncated TLV header at offset {pos}")
        ident = int.from_bytes(data[pos + 1 : pos + 1 + id_len], "big")
        if len_type == 0:
            length = type_byte & 0b111
        else:
            length = int.from_bytes(data[pos + 1 + id_len : header_end], "big")
        end = header_end + length
        if end > len(data):
            raise TlvError(
                f"TLV {_TLV_KIND_NAMES[kind]} {ident} at offset {pos} claims {length} bytes,"
                f" only {len(data) - header_end} left"
            )
        if container is not None and kind not in _TLV_ALLOWED_CHILDREN[container]:
            raise TlvError(f"TLV {_TLV_KIND_NAMES[kind]} inside a {_TLV_KIND_NAMES[container]}")
        if (kind, ident) in seen:
            raise TlvError(f"duplicate TLV {_TLV_KIND_NAMES[kind]} {ident}")
        seen.add((kind, ident))
        value = bytes(data[header_end:end])
        children = None
        if kind in (TLV_OBJECT_INSTANCE, TLV_MULTIPLE_RESOURCE):
            children = tlv_parse(value, container=kind)
        elements.append(TlvElement(kind, ident, value, children))
        pos = end
    return elements


def tlv_decode_value(raw: bytes, rtype: str | None) -> Any:
    """Decode one TLV value of the given LwM2M type (``None`` type → raw bytes)."""
    if rtype is None or rtype == "opaque":
        return bytes(raw)
    if rtype in ("string", "corelnk"):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TlvError(f"string is not UTF-8: {raw!r}") from e
    if rtype in ("integer", "time"):
        if len(raw) not in (1, 2, 4, 8):
            raise TlvError(f"integer of {len(raw)} bytes (must be 1, 2, 4 or 8)")
        return int.from_bytes(raw, "big", signed=True)
    if rtype == "unsigned":
        if len(raw) not in (1, 2, 4, 8):
            raise TlvError(f"unsigned integer of {len(raw)} bytes (must be 1, 2, 4 or 8)")
        return int.from_bytes(raw, "big", signed=False)
    if rtype == "float":
        if len(raw) == 4:
            return struct.unpack(">f", raw)[0]
        if len(raw) == 8:
            return struct.unpack(">d", raw)[0]
        raise TlvError(f"float of {len(raw)} bytes (must be 4 or 8)")
    if rtype == "boolean":
        if raw not in (b"\x00", b"\x01"):
            raise TlvError(f"boolean must be one byte 0 or 1, found {raw!r}")
        return raw == b"\x01"
    if rtype == "objlnk":
        if len(raw) != 4:
            raise TlvError(f"object link of {len(raw)} bytes (must be 4)")
        oid, iid = struct.unpack(">HH", raw)
        return f"{oid}:{iid}"
    raise TlvError(f"a resource of type {rtype!r} has no value")


def tlv_encode_value(value: Any, rtype: str | None) -> bytes:
    """Encode one value for TLV; integers use the shortest of 1/2/4/8 bytes."""
    rtype = rtype or infer_type(value)
    if rtype in ("integer", "time"):
        for size in (1, 2, 4, 8):
            if -(1 << (8 * size - 1)) <= value < (1 << (8 * size - 1)):
                return int(value).to_bytes(size, "big", signed=True)
        raise ValueError(f"integer out of range: {value}")
    if rtype == "unsigned":
        for size in (1, 2, 4, 8):
            if 0 <= value < (1 << (8 * size)):
                return int(value).to_bytes(size, "big")
        raise ValueError(f"unsigned integer out of range: {value}")
    if rtype == "float":
        return struct.pack(">d", float(value))
    if rtype == "boolean":
        return b"\x01" if value else b"\x00"
    if rtype in ("string", "corelnk"):
        return value.encode("utf-8")
    if rtype == "opaque":
        return bytes(value)
    if rtype == "objlnk":
        oid, iid = _check_objlnk(value).split(":")
        return struct.pack(">HH", int(oid), int(iid))
    raise ValueError(f"cannot encode a value for type {rtype!r}")


def _tlv_resource_into(
    out: dict[str, Any], prefix: tuple[int, int], el: TlvElement, model: Model | None
) -> None:
    """Add a resource or multiple-resource element of instance ``prefix`` to ``out``."""
    path = (*prefix, el.id)
    res = model.resource(path) if model is not None else None
    if el.kind == TLV_RESOURCE:
        if res is not None and res.multiple:
            raise TlvError(f"{format_path(path)} is multi-instance but sent as a single resource")
        out[format_path(path)] = tlv_decode_value(el.value, res.type if res else None)
    elif el.kind == TLV_MULTIPLE_RESOURCE:
        if res is not None and not res.multiple:
            raise TlvError(f"{format_path(path)} is single-instance but sent as a multiple resource")
        for child in el.children or []:
            out[format_path((*path, child.id))] = tlv_decode_value(child.value, res.type if res else None)
    else:
        raise TlvError(f"expected a resource TLV for {format_path(path)}, found {_TLV_KIND_NAMES[el.kind]}")


def decode_tlv(payload: bytes, path: str, model: Model | None = None) -> dict[str, Any]:
    """Decode a TLV payload that answered a request on ``path`` (depth 1 to 4)."""
    ids = parse_path(path)
    elements = tlv_parse(payload)
    out: dict[str, Any] = {}
    if len(ids) == 1:
        for el in elements:
            if el.kind != TLV_OBJECT_INSTANCE:
                raise TlvError(
                    f"object-level TLV must hold object instances, found {_TLV_KIND_NAMES[el.kind]}"
                )
            for child in el.children or []:
                _tlv_resource_into(out, (ids[0], el.id), child, model)
    elif len(ids) == 2:
        for el in elements:
            _tlv_resource_into(out, (ids[0], ids[1]), el, model)
    elif len(ids) == 3:
        if len(elements) != 1 or elements[0].id != ids[2]:
            raise TlvError(f"resource-level TLV for {path} must be exactly one element with id {ids[2]}")
        _tlv_resource_into(out, (ids[0], ids[1]), elements[0], model)
    elif len(ids) == 4:
        if len(elements) != 1 or elements[0].kind != TLV_RESOURCE_INSTANCE or elements[0].id != ids[3]:
            raise TlvError(f"TLV for {path} must be one resource instance element with id {ids[3]}")
        res = model.resource(ids) if model is not None else None
        out[path] = tlv_decode_value(elements[0].value, res.type if res else None)
    else:
        raise TlvError("TLV needs a path of depth 1 to 4")
    return out


def _tlv_encode_resources(
    entries: list[tuple[tuple[int, ...], Any]], depth: int, model: Model | None
) -> list[bytes]:
    """Encode entries (full paths) as resource / multiple-resource TLVs; ``depth`` = index of R."""
    by_rid: dict[int, list[tuple[tuple[int, ...], Any]]] = {}
    for ids, value in entries:
        by_rid.setdefault(ids[depth], []).append((ids, value))
    out = []
    for rid, group in by_rid.items():
        if any(len(ids) == depth + 2 for ids, _ in group):
            children = [
                tlv_element(
                    TLV_RESOURCE_INSTANCE, ids[depth + 1], tlv_encode_value(v, _type_for(model, ids, v))
                )
                for ids, v in group
            ]
            out.append(tlv_element(TLV_MULTIPLE_RESOURCE, rid, children))
        else:
            ((ids, value),) = group
            out.append(tlv_element(TLV_RESOURCE, rid, tlv_encode_value(value, _type_for(model, ids, value))))
    return out


def encode_tlv(values: dict[str, Any], path: str, model: Model | None = None) -> bytes:
    """Encode ``{path: value}`` for a request on ``path`` (the nesting follows the path depth)."""
    base = parse_path(path)
    entries = []
    for p, v in values.items():
        ids = parse_path(p)
        if ids[: len(base)] != base or not 3 <= len(ids) <= 4:
            raise ValueError(f"{p} is not a resource path below {path}")
        entries.append((ids, v))
    if len(base) == 1:
        by_iid: dict[int, list] = {}
        for ids, v in entries:
            by_iid.setdefault(ids[1], []).append((ids, v))
        return b"".join(
            tlv_element(TLV_OBJECT_INSTANCE, iid, _tlv_encode_resources(group, 2, model))
            for iid, group in by_iid.items()
        )
    if len(base) in (2, 3):
        return b"".join(_tlv_encode_resources(entries, 2, model))
    if len(base) == 4:
        ((ids, v),) = entries
        return tlv_element(TLV_RESOURCE_INSTANCE, ids[3], tlv_encode_value(v, _type_for(model, ids, v)))
    raise ValueError("TLV needs a path of depth 1 to 4")


# --- text/plain (0), opaque (42), CBOR (60) --------------------------------------------------

_INT_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
_FLOAT_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")


def text_decode_value(text: str, rtype: str | None) -> Any:
    """Decode one text/plain value of the given type (``None`` → the string)."""
    if rtype is None or rtype in ("string", "corelnk"):
        return text
    if rtype in INTEGER_TYPES:
        if not _INT_RE.match(text) or (rtype == "unsigned" and text.startswith("-")):
            raise TextError(f"not a {rtype}: {text!r}")
        return int(text)
    if rtype == "float":
        if not _FLOAT_RE.match(text):
            raise TextError(f"not a float: {text!r}")
        return float(text)
    if rtype == "boolean":
        if text not in ("0", "1"):
            raise TextError(f"boolean must be '0' or '1', found {text!r}")
        return text == "1"
    if rtype == "opaque":
        try:
            return base64.b64decode(text, validate=True)
        except ValueError as e:
            raise TextError(f"opaque text is not base64: {text!r}") from e
    if rtype == "objlnk":
        try:
            return _check_objlnk(text)
        except CodecError as e:
            raise TextError(str(e)) from e
    raise TextError(f"a resource of type {rtype!r} has no text value")


def decode_text(payload: bytes, path: str, model: Model | None = None) -> dict[str, Any]:
    """Decode a text/plain payload for a single resource or resource instance."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"text/plain payload is not UTF-8: {payload!r}") from e
    return {path: text_decode_value(text, _type_for(model, parse_path(path)))}


def encode_text(value: Any, rtype: str | None = None) -> bytes:
    """Encode one value as text/plain (booleans as 0/1, opaque as base64)."""
    rtype = rtype or infer_type(value)
    if rtype == "boolean":
        return b"1" if value else b"0"
    if rtype == "opaque":
        return base64.b64encode(value)
    if rtype == "float":
        return repr(float(value)).encode()
    return str(value).encode("utf-8")


def decode_opaque(payload: bytes, path: str, model: Model | None = None) -> dict[str, Any]:
    """An opaque payload is the value itself."""
    return {path: bytes(payload)}


def decode_cbor(payload: bytes, path: str, model: Model | None = None) -> dict[str, Any]:
    """Decode a single-value CBOR (60) payload."""
    try:
        value = cbor2.loads(payload)
    except Exception as e:  # cbor2 raises several types
        raise CodecError(f"invalid CBOR: {e}") from e
    if hasattr(value, "timestamp"):  # tag 1 / tag 0 time → Unix seconds
        value = int(value.timestamp())
    return {path: _coerce(value, _cbor_kind(value), _type_for(model, parse_path(path)), path)}


def _cbor_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "vb"
    if isinstance(value, (int, float)):
        return "v"
    if isinstance(value, bytes):
        return "vd"
    if isinstance(value, str):
        return "vs"
    raise CodecError(f"unexpected CBOR item {value!r}")


def encode_cbor(value: Any) -> bytes:
    """Encode one value as CBOR (60)."""
    return cbor2.dumps(value)


# --- SenML JSON (110) / CBOR (112) -----------------------------------------------------------

#: SenML CBOR integer labels (RFC 8428 §6); LwM2M's ``vlo`` stays a text key.
SENML_CBOR_LABELS = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}
SENML_CBOR_KEYS = {name: label for label, name in SENML_CBOR_LABELS.items()}
_VALUE_KEYS = ("v", "vs", "vb", "vd", "vlo")


@dataclass
class SenmlRecord:
    """A resolved SenML record: full name, value kind (v/vs/vb/vd/vlo), value, absolute time."""

    name: str
    kind: str
    value: Any
    time: float | None


def _b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise SenmlError(f"vd is not base64url: {text!r}")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as e:
        raise SenmlError(f"vd is not base64url: {text!r}") from e


def senml_json_records(payload: bytes) -> list[dict[str, Any]]:
    """Parse SenML JSON into raw record dicts (vd converted to bytes)."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SenmlError(f"invalid SenML JSON: {e}") from e
    if not isinstance(doc, list):
        raise SenmlError("SenML JSON must be an array of records")
    records = []
    for rec in doc:
        if not isinstance(rec, dict):
            raise SenmlError(f"SenML record is not an object: {rec!r}")
        rec = dict(rec)
        if "vd" in rec:
            rec["vd"] = _b64url_decode(rec["vd"])
        records.append(rec)
    return records


def senml_cbor_records(payload: bytes) -> list[dict[str, Any]]:
    """Parse SenML CBOR into raw record dicts with the JSON label names."""
    try:
        doc = cbor2.loads(payload)
    except Exception as e:  # cbor2 raises several types
        raise SenmlError(f"invalid SenML CBOR: {e}") from e
    if not isinstance(doc, list):
        raise SenmlError("SenML CBOR must be an array of records")
    records = []
    for rec in doc:
        if not isinstance(rec, dict):
            raise SenmlError(f"SenML record is not a map: {rec!r}")
        out = {}
        for key, value in rec.items():
            if isinstance(key, int):
                if key not in SENML_CBOR_LABELS:
                    raise SenmlError(f"unknown SenML CBOR label {key}")
                out[SENML_CBOR_LABELS[key]] = value
            elif key == "vlo":
                out["vlo"] = value
            else:
                out[key] = value
        if "vd" in out and not isinstance(out["vd"], bytes):
            raise SenmlError("vd must be a CBOR byte string")
        records.append(out)
    return records


def senml_resolve(records: list[dict[str, Any]], *, require_value: bool = True) -> list[SenmlRecord]:
    """Apply base name / base time (RFC 8428 §4.6) and check each record has one value."""
    base_name = ""
    base_time = 0.0
    resolved = []
    for rec in records:
        for key in rec:
            if isinstance(key, str) and key.endswith("_"):
                raise SenmlError(f"unsupported must-understand field {key!r}")
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise SenmlError("bn must be a string")
            base_name = rec["bn"]
        if "bt" in rec:
            if not isinstance(rec["bt"], (int, float)) or isinstance(rec["bt"], bool):
                raise SenmlError("bt must be a number")
            base_time = rec["bt"]
        name = rec.get("n", "")
        if not isinstance(name, str):
            raise SenmlError("n must be a string")
        name = base_name + name
        if not name:
            raise SenmlError("SenML record without a name")
        kinds = [k for k in _VALUE_KEYS if k in rec]
        if len(kinds) > 1:
            raise SenmlError(f"record {name} has several values: {kinds}")
        if not kinds:
            if require_value:
                raise SenmlError(f"record {name} has no value")
            kind, value = "", None
        else:
            kind, value = kinds[0], rec[kinds[0]]
        _check_kind(kind, value, name)
        time = rec.get("t")
        if time is not None:
            if not isinstance(time, (int, float)) or isinstance(time, bool):
                raise SenmlError(f"t of {name} must be a number")
            time = base_time + time
        elif "bt" in rec or base_time:
            time = base_time
        resolved.append(SenmlRecord(name, kind, value, time))
    return resolved


def _check_kind(kind: str, value: Any, name: str) -> None:
    ok = {
        "": value is None,
        "v": isinstance(value, (int, float)) and not isinstance(value, bool),
        "vs": isinstance(value, str),
        "vb": isinstance(value, bool),
        "vd": isinstance(value, bytes),
        "vlo": isinstance(value, str),
    }[kind]
    if not ok:
        raise SenmlError(f"{kind} of {name} has the wrong JSON/CBOR type: {value!r}")


def _coerce(value: Any, kind: str, rtype: str | None, path: str) -> Any:
    """Check a SenML/CBOR value against the resource type and return the canonical value."""
    if rtype is None:
        return value
    expected = {
        "string": "vs",
        "corelnk": "vs",
        "integer": "v",
        "unsigned": "v",
        "time": "v",
        "float": "v",
        "boolean": "vb",
        "opaque": "vd",
        "objlnk": "vlo",
    }.get(rtype)
    if expected is None:
        raise SenmlError(f"{path}: a resource of type {rtype!r} has no value")
    # CBOR (60) carries object links as text strings.
    if rtype == "objlnk" and kind == "vs":
        kind = "vlo"
    if kind != expected:
        raise SenmlError(f"{path}: {rtype} resource carried as {kind!r} (expected {expected!r})")
    if rtype in INTEGER_TYPES:
        if isinstance(value, float):
            if not value.is_integer():
                raise SenmlError(f"{path}: {rtype} resource has a fractional value {value}")
            value = int(value)
        if rtype == "unsigned" and value < 0:
            raise SenmlError(f"{path}: unsigned resource is negative: {value}")
        return value
    if rtype == "float":
        return float(value)
    if rtype == "objlnk":
        try:
            return _check_objlnk(value)
        except CodecError as e:
            raise SenmlError(f"{path}: {e}") from e
    return value


def senml_to_dict(records: list[SenmlRecord], model: Model | None = None) -> dict[str, Any]:
    """Resolved records → ``{path: value}``; names must be resource / resource-instance paths."""
    out: dict[str, Any] = {}
    for rec in records:
        try:
            ids = parse_path(rec.name)
        except ValueError as e:
            raise SenmlError(str(e)) from e
        if not 3 <= len(ids) <= 4:
            raise SenmlError(f"SenML name {rec.name} is not a resource or resource-instance path")
        if rec.name in out:
            raise SenmlError(f"duplicate SenML record for {rec.name}")
        out[rec.name] = _coerce(rec.value, rec.kind, model.resource_type(ids) if model else None, rec.name)
    return out


def decode_senml_json(payload: bytes, path: str = "/", model: Model | None = None) -> dict[str, Any]:
    """Decode SenML JSON (110) to ``{path: value}``."""
    return senml_to_dict(senml_resolve(senml_json_records(payload)), model)


def decode_senml_cbor(payload: bytes, path: str = "/", model: Model | None = None) -> dict[str, Any]:
    """Decode SenML CBOR (112) to ``{path: value}``."""
    return senml_to_dict(senml_resolve(senml_cbor_records(payload)), model)


def _senml_value_entry(path: str, value: Any, model: Model | None) -> tuple[str, Any]:
    rtype = _type_for(model, parse_path(path), value)
    if rtype == "objlnk":
        return "vlo", _check_objlnk(value)
    if rtype == "boolean":
        return "vb", bool(value)
    if rtype in ("string", "corelnk"):
        return "vs", value
    if rtype == "opaque":
        return "vd", bytes(value)
    return "v", value


def senml_records_for(
    values: dict[str, Any], model: Model | None = None, base_name: str | None = None
) -> list[dict[str, Any]]:
    """Build JSON-labelled SenML records (vd as bytes) for ``{path: value}``."""
    records = []
    for i, (path, value) in enumerate(values.items()):
        rec: dict[str, Any] = {}
        if base_name is not None:
            if not path.startswith(base_name):
                raise ValueError(f"{path} does not start with base name {base_name}")
            if i == 0:
                rec["bn"] = base_name
            rec["n"] = path[len(base_name) :]
        else:
            rec["n"] = path
        key, val = _senml_value_entry(path, value, model)
        rec[key] = val
        records.append(rec)
    return records


def encode_senml_json_records(records: list[dict[str, Any]]) -> bytes:
    """Serialise JSON-labelled records (vd bytes → base64url without padding)."""
    out = []
    for rec in records:
        rec = dict(rec)
        if isinstance(rec.get("vd"), (bytes, bytearray)):
            rec["vd"] = base64.urlsafe_b64encode(rec["vd"]).decode().rstrip("=")
        out.append(rec)
    return json.dumps(out, separators=(",", ":")).encode()


def encode_senml_cbor_records(records: list[dict[str, Any]]) -> bytes:
    """Serialise JSON-labelled records with the SenML CBOR integer labels."""
    return cbor2.dumps([{SENML_CBOR_KEYS.get(k, k): v for k, v in rec.items()} for rec in records])


def encode_senml_json(
    values: dict[str, Any], model: Model | None = None, base_name: str | None = None
) -> bytes:
    """Encode ``{path: value}`` as SenML JSON (110)."""
    return encode_senml_json_records(senml_records_for(values, model, base_name))


def encode_senml_cbor(
    values: dict[str, Any], model: Model | None = None, base_name: str | None = None
) -> bytes:
    """Encode ``{path: value}`` as SenML CBOR (112)."""
    return encode_senml_cbor_records(senml_records_for(values, model, base_name))


# --- CoRE link format (40) -------------------------------------------------------------------

# RFC 5988 parmname and RFC 6690 ptoken character sets.
_PARMNAME_RE = re.compile(r"[A-Za-z0-9!#$&+\-.^_`|~]+")
_PTOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]+")


@dataclass
class Link:
    """One link-value: the target and its parameters in order (value None = no ``=value``)."""

    href: str
    params: list[tuple[str, str | None]]

    @property
    def attrs(self) -> dict[str, str | None]:
        """Parameters as a dict (first occurrence of a name wins)."""
        out: dict[str, str | None] = {}
        for name, value in self.params:
            out.setdefault(name, value)
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """The value of parameter ``name`` (None for a bare flag) or ``default`` if absent."""
        return self.attrs.get(name, default)

    def __str__(self) -> str:
        return format_link(self.href, self.params)


def format_link(href: str, params: list[tuple[str, str | None]] | dict[str, Any] = ()) -> str:
    """``</1>;ver=1.2``; values that are not ptokens are quoted."""
    items = params.items() if isinstance(params, dict) else params
    out = f"<{href}>"
    for name, value in items:
        if value is None:
            out += f";{name}"
        elif _PTOKEN_RE.fullmatch(str(value)):
            out += f";{name}={value}"
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            out += f';{name}="{escaped}"'
    return out


def parse_link_format(payload: bytes | str) -> list[Link]:
    """Parse RFC 6690 link format strictly (no whitespace; quoted values may hold , and ;)."""
    text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
    links: list[Link] = []
    if text == "":
        return links
    pos, n = 0, len(text)
    while True:
        if pos >= n or text[pos] != "<":
            raise LinkFormatError(f"expected '<' at offset {pos} in {text!r}")
        end = text.find(">", pos + 1)
        if end < 0:
            raise LinkFormatError(f"unterminated '<' at offset {pos}")
        href = text[pos + 1 : end]
        pos = end + 1
        params: list[tuple[str, str | None]] = []
        while pos < n and text[pos] == ";":
            m = _PARMNAME_RE.match(text, pos + 1)
            if not m:
                raise LinkFormatError(f"bad parameter name at offset {pos + 1} in {text!r}")
            name = m.group()
            pos = m.end()
            value: str | None = None
            if pos < n and text[pos] == "=":
                pos += 1
                if pos < n and text[pos] == '"':
                    buf = []
                    pos += 1
                    while True:
                        if pos >= n:
                            raise LinkFormatError(f"unterminated quoted value of {name!r}")
                        c = text[pos]
                        if c == "\\":
                            if pos + 1 >= n:
                                raise LinkFormatError("dangling backslash in quoted value")
                            buf.append(text[pos + 1])
                            pos += 2
                        elif c == '"':
                            pos += 1
                            break
                        else:
                            buf.append(c)
                            pos += 1
                    value = "".join(buf)
                else:
                    m = _PTOKEN_RE.match(text, pos)
                    if not m:
                        raise LinkFormatError(f"empty or invalid value of {name!r} at offset {pos}")
                    value = m.group()
                    pos = m.end()
            params.append((name, value))
        links.append(Link(href, params))
        if pos == n:
            return links
        if text[pos] != ",":
            raise LinkFormatError(f"expected ',' or ';' at offset {pos} in {text!r}")
        pos += 1


def decode_link_format(payload: bytes | str) -> dict[str, dict[str, str | None]]:
    """Link format → ``{href: {param: value}}``; a duplicate href is an error."""
    out: dict[str, dict[str, str | None]] = {}
    for link in parse_link_format(payload):
        if link.href in out:
            raise LinkFormatError(f"duplicate link <{link.href}>")
        out[link.href] = link.attrs
    return out


def encode_link_format(links: list[Link | str]) -> bytes:
    """Join links (Link objects or pre-formatted strings) with commas."""
    return ",".join(str(link) for link in links).encode()


# --- dispatcher ------------------------------------------------------------------------------

_DECODERS = {
    CF_TEXT: decode_text,
    CF_OPAQUE: decode_opaque,
    CF_CBOR: decode_cbor,
    CF_TLV: decode_tlv,
    CF_SENML_JSON: decode_senml_json,
    CF_SENML_CBOR: decode_senml_cbor,
}


def decode(payload: bytes, content_format: int | None, path: str, model: Model | None = None) -> dict:
    """Decode a payload of any supported content format to ``{path: value}``.

    Link format returns ``{href: {param: value}}`` instead.
    """
    if content_format == CF_LINK_FORMAT:
        return decode_link_format(payload)
    try:
        decoder = _DECODERS[content_format]
    except KeyError:
        raise CodecError(f"no decoder for content format {content_format}") from None
    return decoder(payload, path, model)


def encode_values(
    values: dict[str, Any], fmt: str | int, path: str, model: Model | None = None
) -> tuple[bytes, int]:
    """Encode values for a write in format ``fmt`` (name or number); returns (payload, cf)."""
    cf = CF_BY_NAME.get(fmt, fmt) if isinstance(fmt, str) else fmt
    if fmt == "text":
        cf = CF_TEXT
    if cf == CF_TLV:
        return encode_tlv(values, path, model), cf
    if cf == CF_SENML_JSON:
        return encode_senml_json(values, model), cf
    if cf == CF_SENML_CBOR:
        return encode_senml_cbor(values, model), cf
    if cf in (CF_TEXT, CF_CBOR, CF_OPAQUE):
        ((p, value),) = values.items()
        if cf == CF_TEXT:
            return encode_text(value, _type_for(model, parse_path(p), value)), cf
        if cf == CF_CBOR:
            return encode_cbor(value), cf
        return bytes(value), cf
    raise ValueError(f"no encoder for format {fmt!r}")
