"""LwM2M object model for the interop suite, read from the OMA registry XML at test start.

The tables (resource ids, types, operations, multiplicity) come from the OMA DDF files, never
from hand-typed Python, so the suite and the daemon can only agree if both follow the registry.

Where the XML comes from, first match wins:

1. ``$LWM2M_REGISTRY_DIR``;
2. ``/work/shared/lwm2m-registry`` (the shared copy the protocol notes refer to);
3. ``src/model/oma`` in this repository (byte-identical copy the daemon's ``build.rs`` uses;
   this keeps the suite runnable on a machine that only has the repository).
"""

from __future__ import annotations

import functools
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_REGISTRY = Path("/work/shared/lwm2m-registry")
REPO_REGISTRY = REPO_ROOT / "src" / "model" / "oma"

#: XML ``<Type>`` text → the suite's type name.
_TYPE_NAMES = {
    "String": "string",
    "Integer": "integer",
    "Unsigned Integer": "unsigned",
    "Float": "float",
    "Boolean": "boolean",
    "Opaque": "opaque",
    "Time": "time",
    "Objlnk": "objlnk",
    "Corelnk": "corelnk",
    "": "none",
}

#: Types whose values are Python ``int``.
INTEGER_TYPES = frozenset({"integer", "unsigned", "time"})
#: Types that may carry ``gt`` / ``lt`` / ``st`` attributes.
NUMERIC_TYPES = frozenset({"integer", "unsigned", "time", "float"})


@dataclass(frozen=True)
class ResourceDef:
    """One resource of an object definition."""

    id: int
    name: str
    type: str  # one of the values of _TYPE_NAMES
    operations: str  # "", "R", "W", "RW", "E"
    multiple: bool
    mandatory: bool

    @property
    def readable(self) -> bool:
        """True if the resource can be read (operations contain R)."""
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        """True if a DM server may write it (operations contain W)."""
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        """True for executable resources."""
        return "E" in self.operations


@dataclass(frozen=True)
class ObjectDef:
    """One object definition (one version of one object id)."""

    id: int
    name: str
    version: str  # ObjectVersion, "1.0" when the file has none
    lwm2m_version: str
    multiple: bool
    mandatory: bool
    resources: dict[int, ResourceDef] = field(default_factory=dict)


class Model:
    """All object definitions found in a registry directory.

    ``objects`` holds the newest version of each object id; ``versions`` lists every version
    present, so a test can accept any registered version of an object.
    """

    def __init__(self, definitions: list[ObjectDef], source: Path):
        self.source = source
        self.versions: dict[int, set[str]] = {}
        self.objects: dict[int, ObjectDef] = {}
        for d in definitions:
            self.versions.setdefault(d.id, set()).add(d.version)
            current = self.objects.get(d.id)
            if current is None or _version_key(d.version) > _version_key(current.version):
                self.objects[d.id] = d

    def object(self, oid: int) -> ObjectDef | None:
        """The newest definition of object ``oid`` or None."""
        return self.objects.get(oid)

    def resource(self, path: str | tuple[int, ...]) -> ResourceDef | None:
        """The resource definition for a path of depth 3 or 4 (``/3/0/11`` or ``/3/0/11/0``)."""
        ids = parse_path(path) if isinstance(path, str) else path
        if len(ids) < 3:
            return None
        obj = self.objects.get(ids[0])
        if obj is None:
            return None
        return obj.resources.get(ids[2])

    def resource_type(self, path: str | tuple[int, ...]) -> str | None:
        """The type name of the resource at ``path`` or None if unknown."""
        res = self.resource(path)
        return res.type if res else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


_PATH_RE = re.compile(r"^(/(0|[1-9][0-9]{0,4}))*/?$")


def parse_path(path: str) -> tuple[int, ...]:
    """``"/3/0/11"`` → ``(3, 0, 11)``; ``"/"`` → ``()``. Raises ValueError on bad syntax."""
    if not path.startswith("/") or not _PATH_RE.match(path):
        raise ValueError(f"not an LwM2M path: {path!r}")
    parts = [p for p in path.split("/") if p != ""]
    ids = tuple(int(p) for p in parts)
    if any(i > 65535 for i in ids):
        raise ValueError(f"path id out of range: {path!r}")
    return ids


def format_path(ids: tuple[int, ...] | list[int]) -> str:
    """``(3, 0, 11)`` → ``"/3/0/11"``; ``()`` → ``"/"``."""
    return "/" + "/".join(str(i) for i in ids) if ids else "/"


def parse_object_xml(text: str | bytes) -> ObjectDef:
    """Parse one OMA DDF file (``<LWM2M><Object>...``) into an ObjectDef."""
    root = ET.fromstring(text)
    obj = root.find("Object")
    if obj is None:
        raise ValueError("no <Object> element")

    def child(el: ET.Element, tag: str, default: str = "") -> str:
        found = el.find(tag)
        return (found.text or "").strip() if found is not None else default

    resources: dict[int, ResourceDef] = {}
    for item in obj.findall("./Resources/Item"):
        rid = int(item.attrib["ID"])
        xml_type = child(item, "Type")
        if xml_type not in _TYPE_NAMES:
            raise ValueError(f"resource {rid}: unknown type {xml_type!r}")
        resources[rid] = ResourceDef(
            id=rid,
            name=child(item, "Name"),
            type=_TYPE_NAMES[xml_type],
            operations=child(item, "Operations"),
            multiple=child(item, "MultipleInstances") == "Multiple",
            mandatory=child(item, "Mandatory") == "Mandatory",
        )
    return ObjectDef(
        id=int(child(obj, "ObjectID")),
        name=child(obj, "Name"),
        version=child(obj, "ObjectVersion") or "1.0",
        lwm2m_version=child(obj, "LWM2MVersion") or "1.0",
        multiple=child(obj, "MultipleInstances") == "Multiple",
        mandatory=child(obj, "Mandatory") == "Mandatory",
        resources=resources,
    )


def registry_dir() -> Path:
    """The directory the XML is read from (see the module docstring for the search order)."""
    env = os.environ.get("LWM2M_REGISTRY_DIR")
    if env:
        return Path(env)
    if SHARED_REGISTRY.is_dir():
        return SHARED_REGISTRY
    return REPO_REGISTRY


def load_model_from(directory: Path) -> Model:
    """Parse every ``*.xml`` in ``directory``."""
    files = sorted(directory.glob("*.xml"))
    if not files:
        raise FileNotFoundError(f"no OMA object XML files in {directory}")
    return Model([parse_object_xml(f.read_bytes()) for f in files], directory)


@functools.cache
def load_model() -> Model:
    """The suite-wide model, parsed once per test session."""
    return load_model_from(registry_dir())
