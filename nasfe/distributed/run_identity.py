"""A run name stands for one set of settings: re-running it with others is refused, in one line.

Re-using a name resumes that run (search, retrain, sweep). The settings a run was started with are
recorded next to it (without that, a finished run re-run with ``--set loss.lambda_per=0.5`` would
return its old results, trained with 0.04), and a re-run whose settings differ stops before Ray starts with one line naming every differing field;
``--no-resume`` starts the name over with the new settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from nasfe.errors import CommandError
from nasfe.imageio import atomic_write_json

SETTINGS_FILE = "run_settings.json"
NEW_RUN_FLAG = "--no-resume"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``{'a': {'b': 1}}`` -> ``{'a.b': 1}``)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def differences(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """``'key: old -> new'`` for every dotted key whose value differs (``ignore``: key prefixes)."""
    a, b = flatten(old), flatten(new)
    skip = tuple(ignore)
    out = []
    for key in sorted(set(a) | set(b)):
        if skip and key.startswith(skip):
            continue
        if json.dumps(a.get(key), sort_keys=True, default=str) != json.dumps(b.get(key), sort_keys=True, default=str):
            out.append(f"{key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}")
    return out


def refuse(where: str | Path, what: str, diffs: list[str]) -> None:
    """Raise the one-line :class:`CommandError` for a re-run with other settings."""
    raise CommandError(
        f"{where}: {what} was started with other settings ({'; '.join(diffs)}); "
        f"run again with {NEW_RUN_FLAG} to start it over with these, or pick another --name"
    )


def check_run_settings(root: str | Path, settings: dict[str, Any], resume: bool, what: str = "this run") -> None:
    """Refuse to resume ``root`` with other ``settings``; record them when the run starts (local runs).

    With ``resume=False`` the record is replaced (the run starts over).
    """

    path = Path(root) / SETTINGS_FILE
    if resume and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CommandError(f"{path}: not valid JSON; delete it or run with {NEW_RUN_FLAG}") from None
        diffs = differences(old, settings)
        if diffs:
            refuse(root, what, diffs)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def check_job_run(storage, space, resume: bool) -> None:
    """``nasfe search``: the space a reused run name was started with must be this one.

    The record lives in the run's storage (a local folder or a URI such as ``s3://``), so a re-run
    from any node of the cluster is checked against it.
    """
    what = f"run {storage.name!r}"
    settings = json.loads(json.dumps({"space": space.to_dict()}, default=str))
    if resume:
        try:
            old = storage.read_json(SETTINGS_FILE)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CommandError(
                f"{storage.root}/{SETTINGS_FILE}: not valid JSON; delete it or run with {NEW_RUN_FLAG}"
            ) from None
        if old is not None:
            diffs = differences(old, settings)
            if diffs:
                refuse(storage.root, what, diffs)
            return
    storage.write_json(SETTINGS_FILE, settings)
