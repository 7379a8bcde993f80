"""Tests for cyclegan_jobs.storage on local folders, a real SeaweedFS server, and moto."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.awsrequest import AWSResponse
from helpers import s3_error

from cyclegan_jobs import storage
from cyclegan_jobs.storage.s3 import S3Store

if TYPE_CHECKING:
    from conftest import S3Server

# Keys chosen so that a tree walk and a flat key sort disagree unless done carefully:
# '-' (0x2d) < '/' (0x2f) < '0' (0x30), so "a-c" < "a/b" < "a0".
TREE = {
    "a/b.png": b"ab",
    "a-c.JPG": b"ac",
    "a0.txt": b"a0",
    "a/sub/deep.jpeg": b"deep",
    "z.PNG": b"z",
}


def _make_tree(root: Path, files: dict[str, bytes] = TREE) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# --- URIs --------------------------------------------------------------------------------------


def test_split_s3() -> None:
    assert storage.split_s3("s3://bucket/key/prefix") == ("bucket", "key/prefix")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    assert storage.split_s3("s3://bucket/") == ("bucket", "")


@pytest.mark.parametrize("uri", ["s3://", "s3:///x", "/local/path", "s3://bad bucket/x"])
def test_split_s3_rejects_bad_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="s3"):
        storage.split_s3(uri)


def test_other_schemes_are_rejected_not_treated_as_paths() -> None:
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.read_bytes("gs://bucket/key")


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b", ("x", "y.png"), "s3://b/x/y.png"),
        ("s3://b/", ("/x/", "/y.png"), "s3://b/x/y.png"),
        ("s3://b/pre/", ("",), "s3://b/pre/"),
        ("/tmp/out/", ("stylized", "a/b.png"), "/tmp/out/stylized/a/b.png"),
        ("/", ("x",), "/x"),
        ("rel", ("x",), "rel/x"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert storage.join(base, *parts) == expected


def test_is_s3() -> None:
    assert storage.is_s3("s3://b/k")
    assert not storage.is_s3("/tmp/s3://")


def test_another_s3_store_serves_every_s3_call(tmp_path: Path) -> None:
    """set_s3_store (how the feed benchmark swaps in obstore) routes s3:// URIs, and only
    them, to the new store until the old one is put back."""

    class Recording(S3Store):
        def __init__(self) -> None:
            super().__init__(storage.S3)
            self.calls: list[str] = []

        def read_bytes(self, uri: str) -> bytes:
            self.calls.append(uri)
            return b"from the new store"

    new = Recording()
    previous = storage.set_s3_store(new)
    try:
        assert storage.read_bytes("s3://b/k.png") == b"from the new store"
        (tmp_path / "f").write_bytes(b"local")
        assert storage.read_bytes(str(tmp_path / "f")) == b"local"
    finally:
        assert storage.set_s3_store(previous) is new
    assert new.calls == ["s3://b/k.png"]
    assert storage.store_for("s3://b/k.png") is previous


# --- local -------------------------------------------------------------------------------------


def test_local_round_trip(tmp_path: Path) -> None:
    uri = str(tmp_path / "new" / "dir" / "x.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"hello", metadata={"source-etag": "abc"})
    assert storage.read_bytes(uri) == b"hello"
    assert storage.exists(uri)
    info = storage.head(uri)
    stat = os.stat(uri)
    assert info == {
        "size": 5,
        "etag": f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
        "metadata": {"source-etag": "abc"},  # kept in a hidden sidecar
    }
    # The sidecar never shows up in listings, and a rewrite without metadata drops it.
    assert [o.rel for o in storage.list_objects(str(tmp_path / "new"))] == ["dir/x.bin"]
    storage.write_bytes(uri, b"hello again")
    assert storage.head(uri)["metadata"] == {}

    storage.write_json(str(tmp_path / "o.json"), {"b": 1, "a": [1, 2]})
    assert storage.read_json(str(tmp_path / "o.json")) == {"a": [1, 2], "b": 1}
    # Sorted keys and indentation keep the files diffable.
    assert (tmp_path / "o.json").read_text().startswith('{\n  "a": [')


def test_local_missing_objects_and_folders(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(storage.NotFoundError, match=f"no such object: {missing}"):
        storage.read_bytes(missing)
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.head(missing)
    with pytest.raises(storage.StorageError, match=f"no such folder: {tmp_path / 'nodir'}"):
        list(storage.list_objects(str(tmp_path / "nodir")))
    assert list(storage.list_objects(str(tmp_path / "nodir"), missing_ok=True)) == []
    storage.write_bytes(missing, b"{not json")
    with pytest.raises(storage.StorageError, match=f"not valid JSON: {missing}"):
        storage.read_json(missing)


def test_local_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.bin"
    storage.write_bytes(str(target), b"old")
    reader = open(target, "rb")  # held open across the overwrite on purpose

    # A reader that opened the old file keeps seeing it whole: the new file replaces it.
    storage.write_bytes(str(target), b"new content")
    assert reader.read() == b"old"
    reader.close()
    assert target.read_bytes() == b"new content"

    # A write that fails before the rename leaves the previous content and no temp file.
    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.local.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"partial")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_local_listing_is_sorted_recursive_and_filtered(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    (tmp_path / ".tmp-cyclegan-x.png.123").write_bytes(b"half-written")

    infos = list(storage.list_objects(str(tmp_path)))
    rels = [i.rel for i in infos]
    assert rels == sorted(TREE)
    assert rels[:3] == ["a-c.JPG", "a/b.png", "a/sub/deep.jpeg"]
    first = infos[0]
    assert first.uri == str(tmp_path / "a-c.JPG")
    assert first.size == 2

    images = storage.list_objects(str(tmp_path), suffixes=(".jpg", ".png"))
    assert [i.rel for i in images] == ["a-c.JPG", "a/b.png", "z.PNG"]


def test_local_upload_download_and_delete(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    uris = storage.upload_dir(src, str(tmp_path / "copy"))
    assert uris == [str(tmp_path / "copy" / rel) for rel in sorted(TREE)]

    paths = storage.download_dir(str(tmp_path / "copy"), tmp_path / "back")
    assert {p.relative_to(tmp_path / "back").as_posix(): p.read_bytes() for p in paths} == TREE
    assert storage.download_dir(str(tmp_path / "nothing-here"), tmp_path / "empty") == []

    assert storage.delete_prefix(str(tmp_path / "copy")) == len(TREE)
    assert not (tmp_path / "copy").exists()
    assert storage.delete_prefix(str(tmp_path / "copy")) == 0
    # The source is never touched by copies.
    assert {i.rel for i in storage.list_objects(str(src))} == set(TREE)
    with pytest.raises(storage.StorageError, match="refusing"):
        storage.delete_prefix("/")


# --- client configuration ----------------------------------------------------------------------


@pytest.fixture
def default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool size a fresh process starts with: an earlier test file in the same pytest-xdist
    worker may have grown it (ensure_pool is process-wide by design)."""
    monkeypatch.setattr(storage.S3, "pool_size", 2 * storage.MAX_WORKERS)


def test_client_configuration(
    aws_env: None, default_pool: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        storage.configure(endpoint_url="http://127.0.0.1:1")
        client = storage.get_client()
        assert client is storage.get_client()
        assert client.meta.endpoint_url == "http://127.0.0.1:1"
        assert client.meta.config.s3["addressing_style"] == "path"
        # botocore's max_attempts=6 counts retries, so 7 tries in all; bounded waits, so a dead
        # endpoint fails in seconds instead of minutes.
        assert client.meta.config.retries == {"total_max_attempts": 7, "mode": "standard"}
        assert client.meta.config.connect_timeout <= 10 and client.meta.config.read_timeout <= 60
        assert client.meta.config.max_pool_connections == 32

        # An endpoint from the environment (read by boto3 itself) also gets path-style.
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
        storage.configure()
        assert storage.get_client().meta.endpoint_url == "http://127.0.0.1:2"
        assert storage.get_client().meta.config.s3["addressing_style"] == "path"

        injected = object()
        storage.configure(client=injected)
        assert storage.get_client() is injected
    finally:
        storage.configure()


def test_client_is_built_once_across_threads(aws_env: None) -> None:
    storage.configure()
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(storage.get_client())) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(c) for c in seen}) == 1
    finally:
        storage.configure()


# --- S3 on a real server (SeaweedFS) -----------------------------------------------------------


def test_s3_round_trip(s3_bucket: str) -> None:
    uri = storage.join(s3_bucket, "dir", "x.png")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x89PNG data", metadata={"source": "test"})
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x89PNG data"
    info = storage.head(uri)
    assert info["size"] == 9
    assert info["etag"] == hashlib.md5(b"\x89PNG data").hexdigest()
    assert info["metadata"] == {"source": "test"}
    resp = storage.get_client().head_object(Bucket=s3_bucket[5:], Key="dir/x.png")
    assert resp["ContentType"] == "image/png"

    storage.write_json(storage.join(s3_bucket, "o.json"), {"b": [1], "a": None})
    assert storage.read_json(storage.join(s3_bucket, "o.json")) == {"a": None, "b": [1]}


def test_s3_listing(s3_bucket: str, tmp_path: Path) -> None:
    for rel, data in TREE.items():
        storage.write_bytes(storage.join(s3_bucket, "data", rel), data)
    # Neighbours that a string-prefix match (without the folder '/') would wrongly include.
    storage.write_bytes(storage.join(s3_bucket, "data2", "x.png"), b"other")
    storage.write_bytes(storage.join(s3_bucket, "data.png"), b"other")
    storage.get_client().put_object(Bucket=s3_bucket[5:], Key="data/folder/", Body=b"")

    infos = {i.rel: i for i in storage.list_objects(storage.join(s3_bucket, "data"))}
    # SeaweedFS lists folder by folder ("a/..." before "a-c"), unlike AWS's flat key order (see
    # test_s3_listing_is_in_key_order), so only the set and the stability of the order are checked.
    assert sorted(infos) == sorted(TREE)
    assert infos["a-c.JPG"].uri == f"{s3_bucket}/data/a-c.JPG"
    assert infos["a-c.JPG"].size == 2
    assert infos["a-c.JPG"].etag == hashlib.md5(b"ac").hexdigest()

    # The real server's pagination, with a tiny page, gives the same objects in the same order.
    paged = storage.list_objects(storage.join(s3_bucket, "data/"), page_size=2)
    assert [i.rel for i in paged] == list(infos)
    images = storage.list_objects(storage.join(s3_bucket, "data"), suffixes=(".jpg", ".png"))
    assert sorted(i.rel for i in images) == ["a-c.JPG", "a/b.png", "z.PNG"]
    everything = [i.rel for i in storage.list_objects(s3_bucket)]
    assert sorted(everything) == sorted(["data.png", "data2/x.png", *(f"data/{r}" for r in TREE)])


def test_s3_missing_bucket_and_object(s3_bucket: str) -> None:
    missing = storage.join(s3_bucket, "nope.bin")
    with pytest.raises(storage.NotFoundError, match=f"no such object: {missing}"):
        storage.read_bytes(missing)
    with pytest.raises(storage.NotFoundError, match=f"no such object: {missing}"):
        storage.head(missing)
    assert not storage.exists(missing)
    assert list(storage.list_objects(storage.join(s3_bucket, "empty"))) == []

    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket-x' does not exist"):
        list(storage.list_objects("s3://no-such-bucket-x/prefix"))
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-x/k"):
        storage.read_bytes("s3://no-such-bucket-x/k")
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket-x' does not exist"):
        storage.write_bytes("s3://no-such-bucket-x/k", b"x")


def test_s3_wrong_credentials_are_access_denied(s3_server: S3Server, s3_bucket: str) -> None:
    import boto3

    uri = storage.join(s3_bucket, "x.bin")
    intruder = boto3.session.Session(
        aws_access_key_id="wrong", aws_secret_access_key="wrong"
    ).client("s3", endpoint_url=s3_server.endpoint_url)
    storage.configure(client=intruder)
    with pytest.raises(storage.StorageError, match=f"access denied to {uri}"):
        storage.write_bytes(uri, b"x")


def test_s3_upload_download_delete(s3_bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    prefix = storage.join(s3_bucket, "runs", "r1")
    uris = storage.upload_dir(src, prefix)
    assert uris == [f"{prefix}/{rel}" for rel in sorted(TREE)]
    storage.write_bytes(storage.join(s3_bucket, "runs", "r10", "keep.txt"), b"keep")

    paths = storage.download_dir(prefix, tmp_path / "back")
    assert {p.relative_to(tmp_path / "back").as_posix(): p.read_bytes() for p in paths} == TREE
    assert storage.download_dir(storage.join(s3_bucket, "none"), tmp_path / "x") == []

    assert storage.delete_prefix(prefix) == len(TREE)
    assert list(storage.list_objects(prefix)) == []
    assert storage.exists(storage.join(s3_bucket, "runs", "r10", "keep.txt"))
    with pytest.raises(storage.StorageError, match="refusing to delete a whole bucket"):
        storage.delete_prefix(s3_bucket + "/")


# --- S3 unit tests on moto: pagination and fault injection -------------------------------------


def test_listing_paginates_past_1000_keys(moto_s3: str) -> None:
    client = storage.get_client()
    bucket = moto_s3[5:]
    keys = [f"in/{i:05d}.jpg" for i in range(1001)]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    calls: list[str] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append("list"))

    listed = storage.list_objects(storage.join(moto_s3, "in"))
    first = next(listed)
    # Streamed: the first object arrives after one page, before the rest is fetched.
    assert first.rel == "00000.jpg"
    assert len(calls) == 1
    rest = list(listed)
    assert [first.rel] + [i.rel for i in rest] == [k[3:] for k in keys]
    assert len(calls) == 2


def test_s3_listing_is_in_key_order(moto_s3: str) -> None:
    # moto, like AWS S3, lists in flat UTF-8 key order; the local walk matches it.
    for rel, data in TREE.items():
        storage.write_bytes(storage.join(moto_s3, "data", rel), data)
    storage.get_client().put_object(Bucket=moto_s3[5:], Key="data/folder/", Body=b"")
    assert [i.rel for i in storage.list_objects(storage.join(moto_s3, "data"))] == sorted(TREE)


def _inject_errors(client: object, responses: list[tuple[int, str]]) -> list[str]:
    """Answer the next requests with these (status, code) errors, then let requests through."""
    pending = list(responses)
    seen: list[str] = []

    def before_send(request: object, **kwargs: object) -> AWSResponse | None:
        if not pending:
            return None
        status, code = pending.pop(0)
        seen.append(code)
        return s3_error(request, status, code)

    # register_first: run before moto's own before-send hook, which would answer otherwise.
    client.meta.events.register_first("before-send.s3.*", before_send)  # type: ignore[attr-defined]
    return seen


TRANSIENT = [(503, "SlowDown"), (503, "ServiceUnavailable"), (500, "InternalError")]


def test_transient_errors_are_retried(moto_s3: str) -> None:
    uri = storage.join(moto_s3, "out", "x.png")
    seen = _inject_errors(storage.get_client(), TRANSIENT)
    storage.write_bytes(uri, b"payload")
    assert seen == ["SlowDown", "ServiceUnavailable", "InternalError"]

    seen = _inject_errors(storage.get_client(), TRANSIENT)
    assert storage.read_bytes(uri) == b"payload"
    assert len(seen) == 3


def test_without_retries_the_same_faults_fail(moto_s3: str) -> None:
    import boto3
    from botocore.config import Config

    uri = storage.join(moto_s3, "x.bin")
    no_retry = boto3.session.Session().client(
        "s3", config=Config(retries={"total_max_attempts": 1})
    )
    storage.configure(client=no_retry)
    _inject_errors(no_retry, TRANSIENT)
    with pytest.raises(storage.StorageError, match=f"S3 error SlowDown on {uri}"):
        storage.write_bytes(uri, b"x")


def test_access_denied_names_the_uri(moto_s3: str) -> None:
    uri = storage.join(moto_s3, "secret.bin")
    _inject_errors(storage.get_client(), [(403, "AccessDenied")])
    with pytest.raises(storage.StorageError, match=f"access denied to {uri}"):
        storage.read_bytes(uri)


def test_presigned_links_open_in_a_browser_without_the_keys(
    s3_server: S3Server, s3_bucket: str
) -> None:
    import urllib.parse
    import urllib.request

    storage.write_bytes(f"{s3_bucket}/out/_runs/r/contact_sheet.png", b"\x89PNG picture")
    url = storage.presigned_url(f"{s3_bucket}/out/_runs/r/contact_sheet.png", expires_s=600)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["600"] and query["X-Amz-Signature"]
    # A signature, an expiry and the key's id: nothing from which the secret key comes back.
    assert set(query) == {
        "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
        "X-Amz-SignedHeaders", "X-Amz-Signature",
    }  # fmt: skip
    assert url.startswith(s3_server.endpoint_url)
    with urllib.request.urlopen(url, timeout=30) as resp:  # a plain GET, as a browser does
        assert resp.read() == b"\x89PNG picture"
    listing = storage.presigned_url(f"{s3_bucket}/out", listing=True)
    with urllib.request.urlopen(listing, timeout=30) as resp:
        assert b"<Key>out/_runs/r/contact_sheet.png</Key>" in resp.read()
    # Signed for the address a browser uses, which may differ from the workers' endpoint.
    public = storage.presigned_url(f"{s3_bucket}/x.png", endpoint_url="http://localhost:9999")
    assert public.startswith("http://localhost:9999/")
    tampered = url.replace("X-Amz-Expires=600", "X-Amz-Expires=6000")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=30)
    assert refused.value.code == 403


def test_local_paths_link_as_file_uris(tmp_path: Path) -> None:
    assert storage.presigned_url(str(tmp_path / "a.png")) == (tmp_path / "a.png").as_uri()


def test_the_connection_pool_grows_to_the_threads_in_flight(
    aws_env: None, default_pool: None
) -> None:
    storage.configure()
    try:
        before = storage.get_client()
        assert before.meta.config.max_pool_connections == 2 * storage.MAX_WORKERS
        storage.ensure_pool(8)  # smaller: the client stays
        assert storage.get_client() is before
        storage.ensure_pool(70)
        assert storage.get_client().meta.config.max_pool_connections == 70
    finally:
        storage.configure()
        storage.S3.pool_size = 2 * storage.MAX_WORKERS
