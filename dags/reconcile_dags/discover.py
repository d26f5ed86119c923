"""Parse-time discovery of the specs folder: reads YAML files, touches no database or network."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def specs_dir() -> Path:
    """``$RECONCILE_SPECS_DIR``, else the Variable ``reconcile_specs_dir`` as set in the environment
    (``AIRFLOW_VAR_RECONCILE_SPECS_DIR``: read without a metadata-DB call), else ``specs/``."""
    value = os.environ.get("RECONCILE_SPECS_DIR") or os.environ.get("AIRFLOW_VAR_RECONCILE_SPECS_DIR")
    return Path(value) if value else REPO / "specs"


@dataclass(frozen=True)
class SpecEntry:
    """What a DAG needs to know about a spec when it is parsed."""

    name: str
    path: str
    schedule: str | None
    fanout: int
    description: str | None


def list_specs(folder: Path | None = None) -> list[SpecEntry]:
    """Every loadable spec in the folder (``*.yaml`` / ``*.yml``), sorted by name.

    A spec that does not load is logged and left out, so one bad file does not take every DAG
    down; ``reconcile validate`` and the health DAG name it.
    """
    from reconcile.errors import SpecError
    from reconcile.spec import load_spec

    folder = folder or specs_dir()
    out: dict[str, SpecEntry] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            spec = load_spec(path)
        except SpecError as e:
            log.warning("reconcile: skipping %s", e)
            continue
        if spec.name in out:
            log.warning(
                "reconcile: skipping %s: spec name %r already used by %s",
                path,
                spec.name,
                out[spec.name].path,
            )
            continue
        out[spec.name] = SpecEntry(spec.name, str(path), spec.schedule, spec.fanout, spec.description)
    return sorted(out.values(), key=lambda e: e.name)


def list_invalid(folder: Path | None = None) -> list[tuple[str, str]]:
    """(file, one-line reason) of every spec file in the folder that does not load."""
    from reconcile.spec import load_specs

    return load_specs([folder or specs_dir()])[1]


def dag_id(spec_name: str) -> str:
    return "reconcile_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in spec_name)
