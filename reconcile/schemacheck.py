"""Event-schema compatibility: each subject's versions checked under its compatibility mode.

The modes are those of schema registries (Confluent Schema Registry):

    BACKWARD             the new version reads data written with the previous one (reader=new, writer=old)
    FORWARD              the previous version reads data written with the new one (reader=old, writer=new)
    FULL                 both
    *_TRANSITIVE         the same against every earlier version, not just the previous one
    NONE                 no check (the files must still parse)

The rules themselves are the Avro specification's schema-resolution rules as implemented by
``avro.compatibility.ReaderWriterCompatibilityChecker``; this module only chooses which pairs to
check and turns the checker's locations (``/fields/2/type/items/fields/0/type``) into reports a
person can act on: field path, old type, new type, the rule broken.

Modes are declared in ``<dir>/compatibility.yaml``::

    default: BACKWARD            # optional; BACKWARD when absent
    subjects:
      shop.OrderPlaced: FULL
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import yaml
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType, lookup_writer_field

from .errors import SpecError
from .schemas import load

__all__ = [
    "CONFIG_FILE",
    "Mode",
    "Direction",
    "Violation",
    "SubjectResult",
    "CheckResult",
    "load_modes",
    "check_pair",
    "check_subject",
    "check_dir",
]

CONFIG_FILE = "compatibility.yaml"
DEFAULT_MODE_NAME = "BACKWARD"


class Direction(StrEnum):
    """Which side reads: BACKWARD = the new version reads old data, FORWARD = the old reads new."""

    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"

    @property
    def rule(self) -> str:
        """The rule in words, as reports print it."""
        if self is Direction.BACKWARD:
            return "BACKWARD: new reader cannot read old data"
        return "FORWARD: old reader cannot read new data"


class Mode(StrEnum):
    """A subject's compatibility mode, as schema registries define them."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def directions(self) -> tuple[Direction, ...]:
        """The directions this mode checks."""
        base = self.value.removesuffix("_TRANSITIVE")
        if base == "FULL":
            return (Direction.BACKWARD, Direction.FORWARD)
        return () if base == "NONE" else (Direction(base),)

    @property
    def transitive(self) -> bool:
        """True when each version is checked against every earlier one."""
        return self.value.endswith("_TRANSITIVE")


@dataclass(frozen=True, slots=True)
class Violation:
    """One place where a version pair breaks a rule, with both sides' types."""

    subject: str
    mode: Mode
    direction: Direction
    old_version: int
    new_version: int
    field: str  # dotted path: "channel", "lines[].quantity"; "" for the top-level record
    location: str  # the avro checker's location in the reader schema
    kind: str  # avro's SchemaIncompatibilityType name, e.g. "type_mismatch"
    old_type: str
    new_type: str
    problem: str

    @property
    def rule(self) -> str:
        """The rule broken, e.g. "BACKWARD: new reader cannot read old data"."""
        return self.direction.rule

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "subject": self.subject,
            "mode": self.mode.value,
            "rule": self.rule,
            "direction": self.direction.value,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "field": self.field,
            "location": self.location,
            "kind": self.kind,
            "old_type": self.old_type,
            "new_type": self.new_type,
            "problem": self.problem,
        }


@dataclass(frozen=True, slots=True)
class SubjectResult:
    """The check of one subject: its mode, its versions and every violation found."""

    subject: str
    mode: Mode
    versions: tuple[int, ...]
    pairs_checked: int
    violations: tuple[Violation, ...] = ()

    @property
    def compatible(self) -> bool:
        """True when no violation was found."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "subject": self.subject,
            "mode": self.mode.value,
            "versions": list(self.versions),
            "pairs_checked": self.pairs_checked,
            "compatible": self.compatible,
            "violations": [v.to_dict() for v in self.violations],
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The check of a whole schema directory; ``exit_code`` is 0 compatible, 1 violations found."""

    root: str
    subjects: tuple[SubjectResult, ...] = field(default_factory=tuple)

    @property
    def violations(self) -> list[Violation]:
        """Every violation, subject by subject."""
        return [v for s in self.subjects for v in s.violations]

    @property
    def compatible(self) -> bool:
        """True when every subject is compatible under its mode."""
        return all(s.compatible for s in self.subjects)

    @property
    def exit_code(self) -> int:
        """0 when compatible, 1 when a violation was found."""
        return 0 if self.compatible else 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``reconcile check-schemas --format json``."""
        return {
            "root": self.root,
            "compatible": self.compatible,
            "violation_count": len(self.violations),
            "subjects": [s.to_dict() for s in self.subjects],
        }


# -- configuration -------------------------------------------------------------------------
def _mode(value: Any, where: str) -> Mode:
    text = str(value).strip().upper() if isinstance(value, str) else ""
    try:
        return Mode(text)
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise SpecError(f"{where}: {value!r} is not a compatibility mode (one of {choices})") from None


def load_modes(root: Path) -> tuple[Mode, dict[str, Mode]]:
    """The default mode and the per-subject modes declared in ``<root>/compatibility.yaml``."""
    path = root / CONFIG_FILE
    if not path.exists():
        return Mode(DEFAULT_MODE_NAME), {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"{path}: cannot read: {first}") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping with 'default' and 'subjects'")
    unknown = sorted(set(doc) - {"default", "subjects"})
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r} (expected 'default' and 'subjects')")
    default = _mode(doc.get("default", DEFAULT_MODE_NAME), f"{path}: default")
    subjects = doc.get("subjects") or {}
    if not isinstance(subjects, dict):
        raise SpecError(f"{path}: subjects: expected a mapping of subject -> mode")
    modes = {str(s): _mode(m, f"{path}: subjects.{s}") for s, m in subjects.items()}
    for s in modes:
        if not (root / s).is_dir():
            raise SpecError(
                f"{path}: subjects.{s}: no folder {root / s} (a typo, or a subject not yet added?)"
            )
    return default, modes


# -- the check -----------------------------------------------------------------------------
def _type_name(s: avro.schema.Schema | None) -> str:
    """A short, readable name of an Avro type: "string", "long (timestamp-millis)", "array<int>"."""
    if s is None:
        return "(absent)"
    if isinstance(s, avro.schema.UnionSchema):
        return "union[" + ", ".join(_type_name(b) for b in s.schemas) + "]"
    if isinstance(s, avro.schema.ArraySchema):
        return f"array<{_type_name(s.items)}>"
    if isinstance(s, avro.schema.MapSchema):
        return f"map<{_type_name(s.values)}>"
    if isinstance(s, avro.schema.NamedSchema):
        return f"{s.type} {s.fullname}"
    logical = s.props.get("logicalType")
    return f"{s.type} ({logical})" if logical else str(s.type)


def _located(
    reader: avro.schema.Schema,
    writer: avro.schema.Schema,
    prefix: str = "",
    seen: frozenset[tuple[int, int]] = frozenset(),
) -> list[str]:
    """The checker's locations of every incompatibility, made absolute.

    The avro checker drops the location when it descends into a *writer* union (it reports
    "/"); there we ask it again one level down (record fields, array items, map values) so the
    report still names the field. ``seen`` stops the descent in recursive schemas.
    """
    pair = (id(reader), id(writer))
    if pair in seen:
        return []
    seen = seen | {pair}
    res = ReaderWriterCompatibilityChecker().get_compatibility(reader=reader, writer=writer)
    if res.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    found: list[str] = []
    for loc in sorted(res.locations):
        if loc != "/":
            found.append(prefix + loc)
            continue
        sub: list[str] = []
        if isinstance(reader, avro.schema.RecordSchema) and isinstance(writer, avro.schema.RecordSchema):
            for i, rf in enumerate(reader.fields):
                wf = lookup_writer_field(writer_schema=writer, reader_field=rf)
                if wf is not None:
                    sub += _located(rf.type, wf.type, f"{prefix}/fields/{i}/type", seen)
        elif isinstance(reader, avro.schema.ArraySchema) and isinstance(writer, avro.schema.ArraySchema):
            sub = _located(reader.items, writer.items, f"{prefix}/items", seen)
        elif isinstance(reader, avro.schema.MapSchema) and isinstance(writer, avro.schema.MapSchema):
            sub = _located(reader.values, writer.values, f"{prefix}/values", seen)
        found += sub or [prefix or "/"]
    return sorted(dict.fromkeys(found), key=_location_order)


def _location_order(location: str) -> tuple[tuple[int, int | str], ...]:
    """Schema order: /fields/2 before /fields/10."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in location.split("/") if t)


@dataclass
class _Spot:
    """What a checker location points at, in both schemas."""

    path: list[str]
    reader: avro.schema.Schema | None
    writer: avro.schema.Schema | None
    missing_field: bool = False  # the reader's field has no counterpart in the writer
    attribute: str = ""  # "name", "symbols" or "size" when the location ends on one
    union_branch: bool = False  # the location names a writer union branch


def _resolve(reader: avro.schema.Schema, writer: avro.schema.Schema, location: str) -> _Spot:
    spot = _Spot([], reader, writer)
    tokens = [t for t in location.split("/") if t]
    i = 0
    while i < len(tokens):
        t, r, w = tokens[i], spot.reader, spot.writer
        if t == "fields" and i + 1 < len(tokens) and isinstance(r, avro.schema.RecordSchema):
            rf = r.fields[int(tokens[i + 1])]
            wf = (
                lookup_writer_field(writer_schema=w, reader_field=rf)
                if isinstance(w, avro.schema.RecordSchema)
                else None
            )
            spot.path.append(("." if spot.path and not spot.path[-1].endswith(".") else "") + rf.name)
            spot.reader, spot.writer = rf.type, (wf.type if wf is not None else None)
            spot.missing_field = wf is None
            i += 2
            continue
        if t == "items" and isinstance(r, avro.schema.ArraySchema):
            spot.path.append("[]")
            spot.reader = r.items
            spot.writer = w.items if isinstance(w, avro.schema.ArraySchema) else None
        elif t == "values" and isinstance(r, avro.schema.MapSchema):
            spot.path.append("{}")
            spot.reader = r.values
            spot.writer = w.values if isinstance(w, avro.schema.MapSchema) else None
        elif t.isdigit() and isinstance(w, avro.schema.UnionSchema):
            spot.writer = w.schemas[int(t)]
            spot.union_branch = True
        elif t in ("name", "symbols", "size"):
            spot.attribute = t
        i += 1
    return spot


def _violation(
    subject: str,
    mode: Mode,
    direction: Direction,
    old: tuple[int, avro.schema.Schema],
    new: tuple[int, avro.schema.Schema],
    location: str,
) -> Violation:
    backward = direction is Direction.BACKWARD
    reader, writer = (new[1], old[1]) if backward else (old[1], new[1])
    spot = _resolve(reader, writer, location)
    path = "".join(spot.path)
    rtype, wtype = _type_name(spot.reader), _type_name(spot.writer)
    r_role, w_role = ("new", "old") if backward else ("old", "new")
    where = f"field {path!r}" if path else "the record"
    r, w = spot.reader, spot.writer
    if spot.missing_field:
        kind = "reader_field_missing_default_value"
        problem = (
            f"{where} was added without a default: the new reader has no value for it in old data"
            if backward
            else f"{where} was removed and had no default: an old reader has no value for it in new data"
        )
    elif spot.attribute == "name":
        kind = "name_mismatch"
        wname = getattr(w, "fullname", "?")
        problem = f"{where}: the {r_role} type is named {getattr(r, 'fullname', '?')}, the {w_role} {wname}"
        problem += f" (add the alias {wname!r})"
    elif (
        spot.attribute == "symbols"
        and isinstance(r, avro.schema.EnumSchema)
        and isinstance(w, avro.schema.EnumSchema)
    ):
        kind = "missing_enum_symbols"
        extra = sorted(set(w.symbols) - set(r.symbols))
        problem = (
            f"{where}: the {w_role} enum has symbols {extra} that the {r_role} reader lacks "
            "(and it has no enum default)"
        )
    elif spot.attribute == "size":
        kind = "fixed_size_mismatch"
        sizes = getattr(r, "size", "?"), getattr(w, "size", "?")
        problem = f"{where}: the {r_role} fixed size {sizes[0]} differs from the {w_role} {sizes[1]}"
    elif spot.union_branch or isinstance(r, avro.schema.UnionSchema):
        kind = "missing_union_branch"
        problem = f"{where}: no branch of the {r_role} type {rtype} can read {w_role} data of type {wtype}"
    else:
        kind = "type_mismatch"
        problem = f"{where}: the {r_role} reader's type {rtype} cannot read {w_role} data of type {wtype}"
    return Violation(
        subject=subject,
        mode=mode,
        direction=direction,
        old_version=old[0],
        new_version=new[0],
        field=path,
        location=location,
        kind=kind,
        old_type=wtype if backward else rtype,
        new_type=rtype if backward else wtype,
        problem=problem,
    )


def check_pair(
    old: tuple[int, avro.schema.Schema],
    new: tuple[int, avro.schema.Schema],
    direction: Direction,
    subject: str = "",
    mode: Mode = Mode.FULL,
) -> list[Violation]:
    """The violations of one (old, new) version pair in one direction (empty when compatible)."""
    reader, writer = (new[1], old[1]) if direction is Direction.BACKWARD else (old[1], new[1])
    return [_violation(subject, mode, direction, old, new, loc) for loc in _located(reader, writer)]


_PLAIN = {"null", "boolean", "int", "long", "float", "double", "string"}


def _check_defaults(schema: avro.schema.Schema, path: Path, seen: set[str] | None = None) -> None:
    """Refuse a field default that does not fit its type: it would make a compatible-looking
    evolution fail at read time (the avro parser accepts such defaults silently)."""
    seen = set() if seen is None else seen
    if isinstance(schema, avro.schema.RecordSchema):
        if schema.fullname in seen:
            return
        seen.add(schema.fullname)
        for f in schema.fields:
            if f.has_default:
                # A union's default belongs to its first branch (Avro specification).
                t = f.type.schemas[0] if isinstance(f.type, avro.schema.UnionSchema) else f.type
                if t.type in _PLAIN:
                    ok = avro.io.validate(avro.schema.PrimitiveSchema(t.type), f.default)
                elif isinstance(t, avro.schema.EnumSchema):
                    ok = f.default in t.symbols
                else:
                    ok = True  # complex defaults use Avro's JSON encoding; not checked here
                if not ok:
                    raise SpecError(
                        f"schema {path}: field {schema.name}.{f.name}: default {f.default!r} "
                        f"does not fit type {_type_name(t)}"
                        + (" (a union's default must fit its first branch)" if t is not f.type else "")
                    )
            _check_defaults(f.type, path, seen)
    elif isinstance(schema, avro.schema.UnionSchema):
        for b in schema.schemas:
            _check_defaults(b, path, seen)
    elif isinstance(schema, avro.schema.ArraySchema):
        _check_defaults(schema.items, path, seen)
    elif isinstance(schema, avro.schema.MapSchema):
        _check_defaults(schema.values, path, seen)


def _versions(folder: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    for p in sorted(folder.iterdir()):
        if p.suffix != ".avsc":
            continue
        stem = p.stem
        if not (stem.startswith("v") and stem[1:].isdigit() and not stem[1:].startswith("0")):
            raise SpecError(f"schema {p}: name it v<N>.avsc (v1.avsc, v2.avsc, ...), one file per version")
        found.append((int(stem[1:]), p))
    if not found:
        raise SpecError(f"schemas: subject folder {folder} has no v<N>.avsc file")
    return sorted(found)


def _pairs(n: int, transitive: bool) -> Iterable[tuple[int, int]]:
    """(old index, new index) pairs to check among n versions, oldest first."""
    for new in range(1, n):
        for old in range(0 if transitive else new - 1, new):
            yield old, new


def check_subject(subject: str, root: Path, mode: Mode) -> SubjectResult:
    """Check every version pair of one subject under its mode."""
    files = _versions(root / subject)
    parsed: list[tuple[int, avro.schema.Schema]] = []
    for n, p in files:
        schema = load(p)
        _check_defaults(schema, p)
        parsed.append((n, schema))
    violations: list[Violation] = []
    pairs = 0
    for old, new in _pairs(len(parsed), mode.transitive):
        for direction in mode.directions:
            pairs += 1
            violations += check_pair(parsed[old], parsed[new], direction, subject, mode)
    return SubjectResult(subject, mode, tuple(n for n, _ in parsed), pairs, tuple(violations))


def check_dir(root: Path, subjects: Sequence[str] | None = None) -> CheckResult:
    """Check every subject folder under ``root`` (or just ``subjects``) under its declared mode."""
    if not root.is_dir():
        raise SpecError(f"schemas: {root} is not a directory")
    default, modes = load_modes(root)
    names = (
        list(subjects)
        if subjects is not None
        else sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    )
    for s in names:
        if not (root / s).is_dir():
            raise SpecError(f"schemas: no subject {s!r} in {root}")
    results = tuple(check_subject(s, root, modes.get(s, default)) for s in names)
    return CheckResult(str(root), results)
