"""The model store: immutable versions, one PROMOTED.json pointer, and an append-only history.

Layout under a store (a local folder or an s3:// prefix)::

    <store>/versions/<version>/...          model files, config.json, metrics.json, samples/
    <store>/versions/<version>/VERSION.json written last; a version without it is incomplete
    <store>/PROMOTED.json                   {"version", "uri", "promoted_at", "reason", "previous"}
    <store>/history/<UTC time>-<action>-<version>.json   one object per event, never rewritten
    <store>/runs/<run_id>/...               training scratch and checkpoints
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclegan_jobs import storage
from cyclegan_jobs.errors import RegistryError

VERSION_FILE = "VERSION.json"
POINTER_FILE = "PROMOTED.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
# Where the objects a stored model may name live: keras itself and our registered layers.
MODEL_MODULES = ("keras", "cyclegan_jobs")

log = logging.getLogger(__name__)


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


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def _read_object(uri: str) -> dict:
    """A registry record (a JSON object); RegistryError naming `uri` when it is damaged.

    A missing object raises storage.NotFoundError, for the caller to decide what that means.
    """
    data = storage.read_bytes(uri)
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError too
        raise RegistryError(f"{uri} is damaged: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise RegistryError(f"{uri} is damaged: expected a JSON object, got {_json_type(record)}")
    return record


def _name_field(uri: str, record: dict, key: str, *, optional: bool = False) -> str | None:
    """record[key] as a version name; RegistryError naming `uri` if missing or not a name."""
    value = record.get(key)
    if value is None and optional:
        return None
    if value is None:
        raise RegistryError(f'{uri} is damaged: no "{key}" field')
    if not isinstance(value, str):
        raise RegistryError(f'{uri} is damaged: "{key}" is {_json_type(value)}, not a version name')
    try:
        return _check_name("version", value)
    except RegistryError as err:
        raise RegistryError(f'{uri} is damaged: "{key}" is an {err}') from None


def _read_record(store: str, version: str) -> dict | None:
    """The checked VERSION.json of a version; None when it has none (unknown or incomplete)."""
    uri = storage.join(version_uri(store, version), VERSION_FILE)
    try:
        record = _read_object(uri)
    except storage.NotFoundError:
        return None
    named = _name_field(uri, record, "version")
    if named != version:
        raise RegistryError(f"{uri} is damaged: it names version {named}, not {version}")
    if not isinstance(record.get("created_at"), str):
        raise RegistryError(f'{uri} is damaged: "created_at" is missing or not a string')
    return record


def list_versions(store: str) -> list[dict]:
    """Complete versions, oldest first: [{"version", "uri", "created_at", "promoted"}].

    A version whose VERSION.json is damaged is skipped with a warning naming the file; a
    damaged PROMOTED.json raises RegistryError (see promoted()).
    """
    # First, so that a damaged pointer (or promoted version) is one error, not also a warning.
    current = promoted(store)
    current_version = current["version"] if current else None
    root = storage.join(store, "versions")
    records = []
    for info in storage.list_objects(root, suffixes=(VERSION_FILE,), missing_ok=True):
        # Only <version>/VERSION.json marks a version; a file deeper down is just content.
        if info.rel.count("/") != 1 or not info.rel.endswith("/" + VERSION_FILE):
            continue
        try:
            records.append(_read_record(store, info.rel.split("/")[0]))
        except RegistryError as err:
            log.warning("skipping a damaged version: %s", err)
    versions = [
        {
            "version": r["version"],
            "uri": version_uri(store, r["version"]),
            "created_at": r["created_at"],
            "promoted": r["version"] == current_version,
        }
        for r in records
        if r is not None  # deleted between the listing and the read
    ]
    return sorted(versions, key=lambda v: (v["created_at"], v["version"]))


def _read_optional_object(uri: str) -> dict:
    try:
        return _read_object(uri)
    except storage.NotFoundError:
        return {}


def get_version(store: str, version: str) -> dict:
    """VERSION.json of a complete version plus "uri", "config" and "metrics" ({} if absent)."""
    uri = version_uri(store, version)
    record = _read_record(store, version)
    if record is None:
        raise RegistryError(f"no such version {version} in {store}")
    # metrics.json may be added by the evaluation after the version was written.
    return {
        **record,
        "uri": uri,
        "config": _read_optional_object(storage.join(uri, CONFIG_FILE)),
        "metrics": _read_optional_object(storage.join(uri, METRICS_FILE)),
    }


def promoted(store: str) -> dict | None:
    """The current PROMOTED.json pointer, or None when nothing was promoted yet.

    RegistryError naming the file when it is damaged (not a JSON object, no valid "version")
    or points at a version that is not complete in the store.
    """
    uri = storage.join(store, POINTER_FILE)
    try:
        pointer = _read_object(uri)
    except storage.NotFoundError:
        return None
    version = _name_field(uri, pointer, "version")
    _name_field(uri, pointer, "previous", optional=True)
    if _read_record(store, version) is None:
        raise RegistryError(
            f"{uri} is damaged: it points at version {version}, which is not a complete "
            f"version in {store} ({VERSION_FILE} missing); promote another version to replace it"
        )
    return pointer


def _record_event(store: str, action: str, pointer: dict, **extra: Any) -> None:
    # One new object per event: concurrent writers never lose each other's entries.
    stamp = _utc().strftime("%Y%m%dT%H%M%S%fZ")
    event = {"action": action, "at": pointer["promoted_at"], **pointer, **extra}
    name = f"{stamp}-{action}-{pointer['version']}.json"
    storage.write_json(storage.join(store, "history", name), event)


def _set_pointer(
    store: str, version: str, *, previous: str | None, reason: str, action: str, **extra: Any
) -> dict:
    if _read_record(store, version) is None:
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
    A damaged PROMOTED.json is replaced (with a warning): that is how a store is repaired.
    """
    try:
        current = promoted(store)
    except RegistryError as err:
        log.warning("replacing a damaged pointer: %s", err)
        current = None
    if current and current["version"] == version:
        return current
    previous = current["version"] if current else None
    return _set_pointer(store, version, previous=previous, reason=reason, action="promote")


def history(store: str) -> list[dict]:
    """All promote/rollback events, oldest first; a damaged one is skipped with a warning."""
    root = storage.join(store, "history")
    events = []
    # Names start with a UTC timestamp, so key order is time order.
    for info in storage.list_objects(root, suffixes=(".json",), missing_ok=True):
        try:
            event = _read_object(info.uri)
            _name_field(info.uri, event, "version")
            _name_field(info.uri, event, "previous", optional=True)
        except (RegistryError, storage.NotFoundError) as err:
            log.warning("skipping a damaged history event: %s", err)
            continue
        events.append(event)
    return events


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


def load_model(version_uri: str, name: str) -> Any:
    """<version>/<name>.keras as a keras Model, loaded with safe_mode=True.

    Every failure is a one-line RegistryError naming the object: missing or unreadable, not a
    .keras archive (truncated, garbage), a config naming anything outside MODEL_MODULES
    (refused before keras reads it), or keras' own refusal.
    """
    import tempfile

    import keras

    from cyclegan_jobs.training import networks  # noqa: F401  registers our layers, which the config names

    uri = storage.join(version_uri, f"{name}.keras")
    try:
        data = storage.read_bytes(uri)
    except storage.NotFoundError as err:
        raise RegistryError(f"missing model file {uri} (incomplete or damaged version)") from err
    except storage.StorageError as err:
        raise RegistryError(f"cannot read model file {uri}: {err}") from err
    _check_keras_archive(uri, data)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / f"{name}.keras"
        local.write_bytes(data)
        try:
            return keras.saving.load_model(local, safe_mode=True)
        except Exception as err:  # keras raises many types, with pages of config in them
            raise RegistryError(f"cannot load model {uri}: {_first_line(err)}") from err


def _check_keras_archive(uri: str, data: bytes) -> None:
    """Refuse a damaged .keras zip, or one whose config.json names non-keras callables."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad_member = archive.testzip()
            config = json.loads(archive.read("config.json"))
    except KeyError:
        raise RegistryError(f"{uri} is damaged: no config.json in the .keras archive") from None
    except (ValueError, RecursionError) as err:
        raise RegistryError(f"{uri} is damaged: its config.json is not valid JSON") from err
    except Exception as err:  # BadZipFile, zlib.error, EOFError, ...: truncated or not a zip
        raise RegistryError(
            f"{uri} is damaged: not a readable .keras archive ({type(err).__name__}: {err})"
        ) from err
    if bad_member:
        raise RegistryError(f"{uri} is damaged: {bad_member} fails its checksum")
    try:
        foreign = next(_foreign_objects(config), None)
    except RecursionError:
        foreign = "objects nested too deeply to check"
    if foreign:
        raise RegistryError(
            f"{uri} is refused: its config names {foreign}, which is not part of keras or "
            "cyclegan_jobs"
        )


def _foreign_objects(config: Any) -> Iterator[str]:
    """What a keras config names outside MODEL_MODULES: e.g. 'os.system', 'a Python lambda'."""
    if isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and module.split(".")[0] not in MODEL_MODULES:
            name = config.get("class_name")
            if name == "function":  # a function is named by its config: {"config": "system"}
                name = config.get("config")
            yield f"{module}.{name}"
        if config.get("class_name") == "__lambda__":
            yield "a Python lambda"
        for value in config.values():
            yield from _foreign_objects(value)
    elif isinstance(config, list):
        for value in config:
            yield from _foreign_objects(value)


def _first_line(err: BaseException) -> str:
    """The gist of a (keras) error in one line: its innermost cause, without the config dump."""
    text = str(err).rsplit("Exception encountered:", 1)[-1]
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = line or type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."
