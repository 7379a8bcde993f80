"""The model store: immutable versions, one PROMOTED.json pointer, and an append-only history.

Layout under a store (a local folder or an s3:// prefix)::

    <store>/versions/<version>/...          model files, config.json, metrics.json, samples/
    <store>/versions/<version>/VERSION.json written last; a version without it is incomplete
    <store>/PROMOTED.json                   {"version", "uri", "promoted_at", "reason", "previous"}
    <store>/history/<UTC time>-<action>-<version>.json   one object per event, never rewritten
    <store>/runs/<run_id>/...               training scratch and checkpoints
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclegan_jobs import storage

VERSION_FILE = "VERSION.json"
POINTER_FILE = "PROMOTED.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


class RegistryError(RuntimeError):
    """A registry operation was refused or its target does not exist."""


def _utc(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    # A naive datetime is taken to be UTC already, so ids never depend on the machine's zone.
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def new_version_id(now: datetime | None = None) -> str:
    """A new version id that sorts by creation time, e.g. 'v20261129-082500-3fa9c1'."""
    return f"v{_utc(now):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _check_name(kind: str, name: str) -> str:
    if not name or "/" in name or name in (".", "..") or name.strip() != name:
        raise RegistryError(f"invalid {kind} {name!r}: must be a single non-empty path segment")
    return name


def version_uri(store: str, version: str) -> str:
    """Where a version's files live: <store>/versions/<version>."""
    return storage.join(store, "versions", _check_name("version", version))


def runs_uri(store: str, run_id: str) -> str:
    """Where a training run keeps its scratch files: <store>/runs/<run_id>."""
    return storage.join(store, "runs", _check_name("run id", run_id))


def _is_complete(store: str, version: str) -> bool:
    return storage.exists(storage.join(version_uri(store, version), VERSION_FILE))


def write_version(
    store: str, version: str, local_dir: str | Path, *, run_id: str | None = None
) -> str:
    """Upload every file of `local_dir` as a new version, VERSION.json last; return its URI.

    Refuses a version that already exists complete (versions are immutable). Rerunning after
    a crash that left an incomplete version simply uploads over it.
    """
    uri = version_uri(store, version)
    if _is_complete(store, version):
        raise RegistryError(f"version {version} already exists in {store}; versions are immutable")
    if (Path(local_dir) / VERSION_FILE).exists():
        # Uploading it with the other files would make the version look complete too early.
        raise RegistryError(f"{local_dir} must not contain {VERSION_FILE}; the registry writes it")
    uploaded = storage.upload_dir(local_dir, uri)
    if not uploaded:
        raise RegistryError(f"no files to register in {local_dir}")
    files = sorted(u[len(uri) :].lstrip("/") for u in uploaded)
    record = {
        "version": version,
        "created_at": _utc().isoformat(),
        "files": files,
        "run_id": run_id,
    }
    storage.write_json(storage.join(uri, VERSION_FILE), record)
    return uri


def list_versions(store: str) -> list[dict]:
    """Complete versions, oldest first: [{"version", "uri", "created_at", "promoted"}]."""
    root = storage.join(store, "versions")
    records = [
        storage.read_json(info.uri)
        for info in storage.list_objects(root, suffixes=(VERSION_FILE,), missing_ok=True)
        # Only <version>/VERSION.json marks a version; a file deeper down is just content.
        if info.rel.count("/") == 1 and info.rel.endswith("/" + VERSION_FILE)
    ]
    current = promoted(store)
    current_version = current["version"] if current else None
    versions = [
        {
            "version": r["version"],
            "uri": version_uri(store, r["version"]),
            "created_at": r["created_at"],
            "promoted": r["version"] == current_version,
        }
        for r in records
    ]
    return sorted(versions, key=lambda v: (v["created_at"], v["version"]))


def _read_optional_json(uri: str) -> Any:
    try:
        return storage.read_json(uri)
    except storage.NotFoundError:
        return {}


def get_version(store: str, version: str) -> dict:
    """VERSION.json of a complete version plus "uri", "config" and "metrics" ({} if absent)."""
    uri = version_uri(store, version)
    try:
        record = storage.read_json(storage.join(uri, VERSION_FILE))
    except storage.NotFoundError:
        raise RegistryError(f"no such version {version} in {store}") from None
    # metrics.json may be added by the evaluation after the version was written.
    return {
        **record,
        "uri": uri,
        "config": _read_optional_json(storage.join(uri, CONFIG_FILE)),
        "metrics": _read_optional_json(storage.join(uri, METRICS_FILE)),
    }


def promoted(store: str) -> dict | None:
    """The current PROMOTED.json pointer, or None when nothing was promoted yet."""
    try:
        return storage.read_json(storage.join(store, POINTER_FILE))
    except storage.NotFoundError:
        return None


def _record_event(store: str, action: str, pointer: dict, **extra: Any) -> None:
    # One new object per event: concurrent writers never lose each other's entries.
    stamp = _utc().strftime("%Y%m%dT%H%M%S%fZ")
    event = {"action": action, "at": pointer["promoted_at"], **pointer, **extra}
    name = f"{stamp}-{action}-{pointer['version']}.json"
    storage.write_json(storage.join(store, "history", name), event)


def _set_pointer(
    store: str, version: str, *, previous: str | None, reason: str, action: str, **extra: Any
) -> dict:
    if not _is_complete(store, version):
        raise RegistryError(
            f"cannot {action} {version}: no complete version of that name in {store} "
            f"(unknown, or still being written: {VERSION_FILE} is missing)"
        )
    pointer = {
        "version": version,
        "uri": version_uri(store, version),
        "promoted_at": _utc().isoformat(),
        "reason": reason,
        "previous": previous,
    }
    # History first: if we crash in between, the log shows an attempt rather than missing a change.
    _record_event(store, action, pointer, **extra)
    storage.write_json(storage.join(store, POINTER_FILE), pointer)
    return pointer


def promote(store: str, version: str, *, reason: str = "") -> dict:
    """Point PROMOTED.json at a complete version; return the new pointer.

    Promoting the version that is already promoted changes nothing (reruns are safe).
    """
    current = promoted(store)
    if current and current["version"] == version:
        return current
    previous = current["version"] if current else None
    return _set_pointer(store, version, previous=previous, reason=reason, action="promote")


def history(store: str) -> list[dict]:
    """All promote/rollback events, oldest first."""
    root = storage.join(store, "history")
    # Names start with a UTC timestamp, so key order is time order.
    return [
        storage.read_json(info.uri)
        for info in storage.list_objects(root, suffixes=(".json",), missing_ok=True)
    ]


def rollback(store: str) -> dict:
    """Promote again the version that was promoted before the current one; return the pointer.

    Repeated rollbacks walk further back: the new pointer's "previous" is whatever preceded
    the restored version when it was last made current.
    """
    current = promoted(store)
    if current is None:
        raise RegistryError(f"nothing to roll back: no promoted version in {store}")
    target = current.get("previous")
    if not target:
        raise RegistryError(
            f"nothing to roll back to: {current['version']} is the first promoted version "
            f"in {store}"
        )
    earlier = [e for e in history(store) if e.get("version") == target]
    previous = earlier[-1].get("previous") if earlier else None
    return _set_pointer(
        store,
        target,
        previous=previous,
        reason=f"rollback from {current['version']}",
        action="rollback",
        rolled_back_from=current["version"],
    )


def resolve(store_or_version_uri: str) -> str:
    """A version URI as is (checked complete), or a store's promoted version URI."""
    uri = store_or_version_uri.rstrip("/")
    if uri.rsplit("/", 2)[-2:-1] == ["versions"]:
        if not storage.exists(storage.join(uri, VERSION_FILE)):
            raise RegistryError(f"{uri} is not a complete model version ({VERSION_FILE} missing)")
        return uri
    current = promoted(uri)
    if current is None:
        raise RegistryError(
            f"no promoted version in {uri}; train one or promote an existing version first"
        )
    # Rebuilt from the store rather than the stored "uri", so a copied store still resolves.
    return version_uri(uri, current["version"])
