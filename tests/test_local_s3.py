"""The filesystem bucket (dogbreeds.localaws.s3): boto3's S3 request and response shapes and error
codes, keys that cannot leave the bucket folder, and atomic, conditional writes across threads and
processes."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError

from dogbreeds.localaws import s3 as local_s3
from dogbreeds.localaws.s3 import LocalS3

BUCKET = "dogbreeds-local"


def etag_of(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def failure(call) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    return info.value


def code_status_operation(call) -> tuple:
    error = failure(call)
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"], error.operation_name


def utf8_order(keys) -> list:
    return sorted(keys, key=lambda key: key.encode("utf-8"))


def listed(s3, **kwargs) -> list:
    """Every key the paginator yields, in the order it yields them."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, **kwargs)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def snapshot(folder: Path) -> dict:
    """Everything under ``folder`` (links not followed): path -> bytes, "folder" or the link's target."""
    found = {}
    for top, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(top, name)
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "folder"
            else:
                found[rel] = path.read_bytes()
    return found


@pytest.fixture
def s3(tmp_path) -> LocalS3:
    client = LocalS3(tmp_path / "s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def put_all(s3, objects: dict) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


# --- objects -----------------------------------------------------------------------------------------

def test_put_then_get_returns_the_bytes_with_their_md5_as_etag(s3):
    data = b"\xff\xd8\xff\xe0 not really a jpeg"
    put = s3.put_object(Bucket=BUCKET, Key="datasets/dogs/train/akita/1.jpg", Body=data, ContentType="image/jpeg")
    got = s3.get_object(Bucket=BUCKET, Key="datasets/dogs/train/akita/1.jpg")

    assert put["ETag"] == etag_of(data) == got["ETag"]
    assert got["Body"].read() == data
    assert (got["ContentLength"], got["ContentType"], got["Metadata"]) == (len(data), "image/jpeg", {})
    assert abs(got["LastModified"] - datetime.now(timezone.utc)) < timedelta(seconds=5)
    head = s3.head_object(Bucket=BUCKET, Key="datasets/dogs/train/akita/1.jpg")
    assert (head["ETag"], head["ContentLength"], "Body" in head) == (etag_of(data), len(data), False)


def test_a_body_may_be_str_or_a_file_and_content_type_defaults_like_s3(s3):
    s3.put_object(Bucket=BUCKET, Key="text", Body="héllo")
    s3.put_object(Bucket=BUCKET, Key="stream", Body=io.BytesIO(b"x" * 3_000_000), Metadata={"run": "7"})

    text = s3.get_object(Bucket=BUCKET, Key="text")
    assert (text["Body"].read(), text["ContentType"]) == ("héllo".encode(), "binary/octet-stream")
    stream = s3.get_object(Bucket=BUCKET, Key="stream")
    assert list(stream["Body"].iter_chunks(1_000_000)) == [b"x" * 1_000_000] * 3
    assert (stream["ETag"], stream["Metadata"]) == (etag_of(b"x" * 3_000_000), {"run": "7"})


def test_an_overwrite_changes_the_etag_every_reader_sees(s3, tmp_path):
    other_process = LocalS3(tmp_path / "s3")          # its own cache, as another process would have
    s3.put_object(Bucket=BUCKET, Key="state.json", Body=b"version-1")
    assert other_process.head_object(Bucket=BUCKET, Key="state.json")["ETag"] == etag_of(b"version-1")
    assert other_process.list_objects_v2(Bucket=BUCKET)["Contents"][0]["ETag"] == etag_of(b"version-1")

    s3.put_object(Bucket=BUCKET, Key="state.json", Body=b"version-2")      # same size, new content

    for reader in (s3, other_process):
        assert reader.head_object(Bucket=BUCKET, Key="state.json")["ETag"] == etag_of(b"version-2")
        assert reader.list_objects_v2(Bucket=BUCKET)["Contents"][0]["ETag"] == etag_of(b"version-2")
        got = reader.get_object(Bucket=BUCKET, Key="state.json")
        assert (got["Body"].read(), got["ETag"]) == (b"version-2", etag_of(b"version-2"))


def test_upload_download_and_copy_keep_the_bytes_and_the_content_type(s3, tmp_path):
    source = tmp_path / "model.tar.gz"
    source.write_bytes(b"tarball" * 1000)
    s3.upload_file(str(source), BUCKET, "jobs/train-1/output/model.tar.gz",
                   ExtraArgs={"ContentType": "application/gzip"})
    s3.download_file(BUCKET, "jobs/train-1/output/model.tar.gz", str(tmp_path / "back.tar.gz"))
    assert (tmp_path / "back.tar.gz").read_bytes() == source.read_bytes()

    copied = s3.copy_object(Bucket=BUCKET, Key="models/current.tar.gz",
                            CopySource={"Bucket": BUCKET, "Key": "jobs/train-1/output/model.tar.gz"})
    assert copied["CopyObjectResult"]["ETag"] == etag_of(source.read_bytes())
    assert s3.head_object(Bucket=BUCKET, Key="models/current.tar.gz")["ContentType"] == "application/gzip"

    s3.copy_object(Bucket=BUCKET, Key="models/current.tar.gz", CopySource=f"{BUCKET}/models/current.tar.gz",
                   MetadataDirective="REPLACE", ContentType="application/x-tar")
    assert s3.head_object(Bucket=BUCKET, Key="models/current.tar.gz")["ContentType"] == "application/x-tar"
    assert code_status_operation(lambda: s3.copy_object(
        Bucket=BUCKET, Key="models/current.tar.gz", CopySource=f"{BUCKET}/models/current.tar.gz"),
    ) == ("InvalidRequest", 400, "CopyObject")


def test_a_key_cannot_also_be_a_folder_until_the_keys_under_it_are_gone(s3):
    s3.put_object(Bucket=BUCKET, Key="a/b", Body=b"1")
    s3.put_object(Bucket=BUCKET, Key="x", Body=b"2")

    assert "folder" in failure(lambda: s3.put_object(Bucket=BUCKET, Key="a", Body=b"3")).response["Error"]["Message"]
    assert "folder" in failure(lambda: s3.put_object(Bucket=BUCKET, Key="x/y", Body=b"4")).response["Error"]["Message"]
    s3.delete_object(Bucket=BUCKET, Key="a/b")          # its emptied folder goes with it
    s3.put_object(Bucket=BUCKET, Key="a", Body=b"5")
    assert listed(s3) == ["a", "x"]


# --- listing -----------------------------------------------------------------------------------------

KEYS = ["b", "a/x", "a-c", "a/b/c", "a0", "Z", "é", "a/b-", "zz/é/1", "a b", "a/b/c-d"]


def test_listing_is_in_utf8_byte_order_with_sizes_and_etags(s3):
    put_all(s3, {key: key.encode() * 2 for key in KEYS})

    response = s3.list_objects_v2(Bucket=BUCKET)
    assert [item["Key"] for item in response["Contents"]] == utf8_order(KEYS)
    assert [(item["Size"], item["ETag"]) for item in response["Contents"]] == [
        (len(key.encode()) * 2, etag_of(key.encode() * 2)) for key in utf8_order(KEYS)]
    assert (response["KeyCount"], response["IsTruncated"], "NextContinuationToken" in response) == (11, False, False)
    assert [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="a/b")["Contents"]] == [
        "a/b-", "a/b/c", "a/b/c-d"]


def test_pages_of_max_keys_resume_exactly_where_the_last_one_stopped(s3):
    put_all(s3, {key: b"." for key in KEYS})
    pages, request = [], {"Bucket": BUCKET, "MaxKeys": 3}
    while True:
        page = s3.list_objects_v2(**request)
        pages.append([item["Key"] for item in page["Contents"]])
        if not page["IsTruncated"]:
            break
        request["ContinuationToken"] = page["NextContinuationToken"]

    assert [len(page) for page in pages] == [3, 3, 3, 2]
    assert sum(pages, []) == utf8_order(KEYS)


def test_start_after_lists_only_the_keys_that_sort_after_it(s3):
    put_all(s3, {key: b"." for key in KEYS})
    for start in ("a/b/c", "a/c", "a", "zz"):
        expected = [key for key in utf8_order(KEYS) if key.encode() > start.encode()]
        assert listed(s3, StartAfter=start) == expected, start
    page = s3.list_objects_v2(Bucket=BUCKET, StartAfter="a/b/c", MaxKeys=1)
    assert ([item["Key"] for item in page["Contents"]], page["StartAfter"]) == (["a/b/c-d"], "a/b/c")


def test_a_delimiter_rolls_keys_up_into_common_prefixes(s3):
    put_all(s3, {key: b"." for key in [
        "datasets/dogs/_READY", "datasets/dogs/train/akita/1.jpg", "datasets/dogs/train/akita/2.jpg",
        "datasets/dogs/train/beagle/1.jpg", "datasets/dogs/valid/akita/1.jpg", "datasets/dogs-old/x.jpg",
        "datasets/readme.txt"]})
    (s3.prefix_path(BUCKET, "datasets/dogs/test/empty/")).mkdir(parents=True)     # a folder, no objects

    dogs = s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/dogs/", Delimiter="/")
    assert [item["Key"] for item in dogs["Contents"]] == ["datasets/dogs/_READY"]
    assert dogs["CommonPrefixes"] == [{"Prefix": "datasets/dogs/train/"}, {"Prefix": "datasets/dogs/valid/"}]
    assert dogs["KeyCount"] == 3
    top = s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/", Delimiter="/")
    assert top["CommonPrefixes"] == [{"Prefix": "datasets/dogs-old/"}, {"Prefix": "datasets/dogs/"}]   # '-' < '/'
    assert [item["Key"] for item in top["Contents"]] == ["datasets/readme.txt"]

    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix="datasets/dogs/train/", Delimiter="/", PaginationConfig={"PageSize": 1}))
    assert [(page.get("CommonPrefixes"), page["IsTruncated"]) for page in pages] == [
        ([{"Prefix": "datasets/dogs/train/akita/"}], True), ([{"Prefix": "datasets/dogs/train/beagle/"}], False)]
    assert all("Contents" not in page for page in pages)


def test_the_paginator_yields_every_key_exactly_once(s3):
    keys = [f"batch/b1/input/{folder}/{i:03d}.jpg" for folder in ("a", "b", "c") for i in range(17)]
    keys.append("batch/b1/_READY")
    put_all(s3, {key: b"." for key in keys})

    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="batch/",
                                                                PaginationConfig={"PageSize": 10}))
    seen = [item["Key"] for page in pages for item in page["Contents"]]
    assert [page["KeyCount"] for page in pages] == [10, 10, 10, 10, 10, 2]
    assert set(Counter(seen).values()) == {1}
    assert seen == utf8_order(keys)


def test_missing_keys_and_buckets_fail_with_the_codes_boto3_gives(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="datasets/dogs/_READY", Body=b"{}")

    missing = failure(lambda: s3.get_object(Bucket=BUCKET, Key="nope.jpg"))
    assert str(missing) == ("An error occurred (NoSuchKey) when calling the GetObject operation: "
                            "The specified key does not exist.")
    assert isinstance(missing, s3.exceptions.NoSuchKey)
    assert code_status_operation(lambda: s3.head_object(Bucket=BUCKET, Key="nope.jpg")) == ("404", 404, "HeadObject")
    assert code_status_operation(lambda: s3.get_object(Bucket=BUCKET, Key="datasets/dogs")) == (
        "NoSuchKey", 404, "GetObject")      # a folder is not an object
    assert code_status_operation(lambda: s3.get_object(Bucket="no-such-bucket", Key="x")) == (
        "NoSuchBucket", 404, "GetObject")
    assert code_status_operation(lambda: s3.list_objects_v2(Bucket="no-such-bucket")) == (
        "NoSuchBucket", 404, "ListObjectsV2")
    assert code_status_operation(lambda: s3.head_bucket(Bucket="no-such-bucket")) == ("404", 404, "HeadBucket")
    assert code_status_operation(lambda: s3.download_file(BUCKET, "nope.jpg", str(tmp_path / "got"))) == (
        "404", 404, "HeadObject")
    assert not (tmp_path / "got").exists()
    assert code_status_operation(lambda: s3.copy_object(
        Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": "nope.jpg"})) == (
        "NoSuchKey", 404, "CopyObject")
    assert code_status_operation(lambda: s3.list_objects_v2(Bucket=BUCKET, ContinuationToken="garbage")) == (
        "InvalidArgument", 400, "ListObjectsV2")

    assert s3.delete_object(Bucket=BUCKET, Key="nope.jpg")["ResponseMetadata"]["HTTPStatusCode"] == 204
    empty = s3.list_objects_v2(Bucket=BUCKET, Prefix="batch/")
    assert ("Contents" in empty, empty["KeyCount"], empty["IsTruncated"]) == (False, 0, False)


def test_bucket_names_follow_the_s3_rules(tmp_path):
    s3 = LocalS3(tmp_path / "s3")
    for name in ("ab", "Upper", "under_score", "-start", "end-", "a..b", "192.168.0.1", "xn--abc", ".meta",
                 "../escape", "my-bucket--x-s3"):
        assert code_status_operation(lambda: s3.create_bucket(Bucket=name)) == (
            "InvalidBucketName", 400, "CreateBucket"), name
    assert sorted(os.listdir(tmp_path / "s3")) == [".locks"]
    assert s3.create_bucket(Bucket="my.bucket-1")["Location"] == "/my.bucket-1"
    assert s3.create_bucket(Bucket="my.bucket-1")["Location"] == "/my.bucket-1"      # idempotent
    assert s3.head_bucket(Bucket="my.bucket-1")["ResponseMetadata"]["HTTPStatusCode"] == 200


# --- keys that must not leave the bucket -------------------------------------------------------------

@pytest.mark.parametrize("key, why", [
    ("../x", "'..' path segment"),
    ("a/../../x", "'..' path segment"),
    ("/etc/passwd", "starts with '/'"),
    ("a//b", "empty path segment"),
    ("a/./b", "'.' path segment"),
    ("a\\b", "backslash"),
    ("a\x00b", "NUL"),
    ("", "empty"),
    ("folder/", "ends with '/'"),
    ("a/.tmp-1234", "writes in progress"),
    ("x" * 256, "longer than the 255 bytes"),
])
def test_keys_that_could_escape_the_bucket_are_refused_and_nothing_is_written(s3, tmp_path, key, why):
    s3.put_object(Bucket=BUCKET, Key="a/real", Body=b"data")
    (tmp_path / "upload").write_bytes(b"payload")
    before = snapshot(tmp_path)

    calls = [lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"payload"),
             lambda: s3.get_object(Bucket=BUCKET, Key=key),
             lambda: s3.head_object(Bucket=BUCKET, Key=key),
             lambda: s3.delete_object(Bucket=BUCKET, Key=key),
             lambda: s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": "a/real"}),
             lambda: s3.download_file(BUCKET, key, str(tmp_path / "download")),
             lambda: s3.path_of(BUCKET, key)]
    for call in calls:
        error = failure(call)
        assert error.response["Error"]["Code"] == "InvalidArgument"
        assert why in error.response["Error"]["Message"]
    with pytest.raises(S3UploadFailedError, match="InvalidArgument"):
        s3.upload_file(str(tmp_path / "upload"), BUCKET, key)
    assert snapshot(tmp_path) == before


def test_key_length_is_counted_in_utf8_bytes(s3):
    longest = "/".join(["d" * 200] * 5) + "/" + "x" * 19          # 1024 bytes, no segment over 255
    s3.put_object(Bucket=BUCKET, Key=longest, Body=b"ok")
    assert s3.get_object(Bucket=BUCKET, Key=longest)["Body"].read() == b"ok"
    for too_long in (longest + "x", "é/" * 341 + "éé"):           # 1025 and 1027 bytes
        assert code_status_operation(lambda: s3.put_object(Bucket=BUCKET, Key=too_long, Body=b"no")) == (
            "KeyTooLongError", 400, "PutObject")


def test_symbolic_links_out_of_the_bucket_are_never_followed(s3, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    bucket = s3.prefix_path(BUCKET, "")
    s3.put_object(Bucket=BUCKET, Key="real.jpg", Body=b"inside")
    (bucket / "alias.jpg").symlink_to(bucket / "real.jpg")           # stays inside: an ordinary object
    (bucket / "link.txt").symlink_to(outside / "secret.txt")
    (bucket / "linkdir").symlink_to(outside, target_is_directory=True)
    (bucket / "loop").symlink_to(bucket, target_is_directory=True)
    (bucket / "sub").mkdir()
    (bucket / "sub" / "up").symlink_to(bucket / "sub", target_is_directory=True)
    before = snapshot(tmp_path)

    for key in ("link.txt", "linkdir/secret.txt", "linkdir/new.txt"):
        for call in (lambda: s3.get_object(Bucket=BUCKET, Key=key), lambda: s3.head_object(Bucket=BUCKET, Key=key),
                     lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"overwritten"),
                     lambda: s3.delete_object(Bucket=BUCKET, Key=key)):
            error = failure(call)
            assert error.response["Error"]["Code"] == "AccessDenied", key
            assert "symbolic link" in error.response["Error"]["Message"]

    assert snapshot(tmp_path) == before
    assert listed(s3) == ["alias.jpg", "real.jpg"]
    assert s3.get_object(Bucket=BUCKET, Key="alias.jpg")["Body"].read() == b"inside"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="linkdir/")["KeyCount"] == 0


# --- conditional writes ------------------------------------------------------------------------------

def test_if_none_match_writes_only_a_new_key(s3):
    s3.put_object(Bucket=BUCKET, Key="pipeline/state.json", Body=b"first", IfNoneMatch="*")
    error = failure(lambda: s3.put_object(Bucket=BUCKET, Key="pipeline/state.json", Body=b"second",
                                          IfNoneMatch="*"))
    assert (error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"],
            error.response["Error"]["Condition"]) == ("PreconditionFailed", 412, "If-None-Match")
    assert s3.get_object(Bucket=BUCKET, Key="pipeline/state.json")["Body"].read() == b"first"


def test_if_match_writes_only_over_the_version_that_was_read(s3):
    first = s3.put_object(Bucket=BUCKET, Key="state.json", Body=b"v1")["ETag"]
    second = s3.put_object(Bucket=BUCKET, Key="state.json", Body=b"v2", IfMatch=first)["ETag"]

    assert code_status_operation(lambda: s3.put_object(Bucket=BUCKET, Key="state.json", Body=b"v3",
                                                       IfMatch=first)) == ("PreconditionFailed", 412, "PutObject")
    assert code_status_operation(lambda: s3.get_object(Bucket=BUCKET, Key="state.json", IfMatch=first)) == (
        "PreconditionFailed", 412, "GetObject")
    assert code_status_operation(lambda: s3.delete_object(Bucket=BUCKET, Key="state.json", IfMatch=first)) == (
        "PreconditionFailed", 412, "DeleteObject")
    assert code_status_operation(lambda: s3.put_object(Bucket=BUCKET, Key="absent.json", Body=b"v1",
                                                       IfMatch=first)) == ("NoSuchKey", 404, "PutObject")
    assert s3.get_object(Bucket=BUCKET, Key="state.json")["Body"].read() == b"v2"
    s3.put_object(Bucket=BUCKET, Key="state.json", Body=b"v4", IfMatch=second.strip('"'))     # quotes optional
    assert s3.get_object(Bucket=BUCKET, Key="state.json")["Body"].read() == b"v4"


COUNTER = "pipeline/counter.json"


def increment(s3: LocalS3, times: int, barrier) -> tuple:
    """Read-modify-write the counter ``times`` times with IfMatch, retrying on PreconditionFailed;
    returns (the values this writer wrote, its retries)."""
    written, retries = [], 0
    barrier.wait(timeout=120)
    for _ in range(times):
        while True:
            got = s3.get_object(Bucket=BUCKET, Key=COUNTER)
            value = json.loads(got["Body"].read())["n"] + 1
            try:
                s3.put_object(Bucket=BUCKET, Key=COUNTER, Body=json.dumps({"n": value}), IfMatch=got["ETag"])
            except ClientError as error:
                if error.response["Error"]["Code"] != "PreconditionFailed":
                    raise
                retries += 1
                continue
            written.append(value)
            break
    return written, retries


def increment_in_a_process(root: str, times: int, barrier, results) -> None:
    results.put(increment(LocalS3(Path(root)), times, barrier))


def test_read_modify_write_with_if_match_loses_no_update_across_threads_and_processes(tmp_path):
    threads_n, processes_n, times = 6, 2, 25
    s3 = LocalS3(tmp_path / "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=COUNTER, Body=json.dumps({"n": 0}))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(threads_n + processes_n), context.Queue()
    processes = [context.Process(target=increment_in_a_process, args=(str(tmp_path / "s3"), times, barrier, results))
                 for _ in range(processes_n)]
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(increment(s3, times, barrier)))
               for _ in range(threads_n)]
    for worker in processes + threads:
        worker.start()
    for thread in threads:
        thread.join(timeout=300)
    outcomes += [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    total = (threads_n + processes_n) * times
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=COUNTER)["Body"].read()) == {"n": total}
    # Each value was written by exactly one writer: no two writers succeeded from the same read.
    assert sorted(value for written, _ in outcomes for value in written) == list(range(1, total + 1))
    assert sum(retries for _, retries in outcomes) > 0          # the writers really did collide


def test_concurrent_writers_and_readers_only_see_whole_versions(s3):
    keys = [f"batch/b1/output/{i}.out" for i in range(4)]
    errors, stop = [], threading.Event()

    def write(key):
        for round_ in range(40):
            s3.put_object(Bucket=BUCKET, Key=key, Body=f"{key} round {round_} ".encode() * (round_ + 1))

    def read():
        while not stop.is_set():
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="batch/"):
                for item in page.get("Contents", []):
                    got = s3.get_object(Bucket=BUCKET, Key=item["Key"])
                    body = got["Body"].read()
                    if etag_of(body) != got["ETag"] or len(body) != got["ContentLength"]:
                        errors.append(item["Key"])

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(key,)) for key in keys]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()

    assert errors == []
    final = {key: f"{key} round 39 ".encode() * 40 for key in keys}
    assert {item["Key"]: item["ETag"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]} == {
        key: etag_of(body) for key, body in final.items()}


# --- files that are not (yet) objects ----------------------------------------------------------------

def test_temp_files_of_a_writer_that_died_are_never_listed(s3):
    s3.put_object(Bucket=BUCKET, Key="a/b.jpg", Body=b"whole")
    bucket = s3.prefix_path(BUCKET, "")
    (bucket / ".tmp-0badc0de").write_bytes(b"half a")
    (bucket / "a" / ".tmp-feedface").write_bytes(b"half b")
    (bucket / "c").mkdir()
    (bucket / "c" / ".tmp-deadbeef").write_bytes(b"half c")

    assert listed(s3) == ["a/b.jpg"]
    assert s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")["CommonPrefixes"] == [{"Prefix": "a/"}]

    class DiesMidway(io.RawIOBase):
        def readinto(self, buffer):
            raise OSError("the writer died")

    with pytest.raises(OSError, match="the writer died"):
        s3.put_object(Bucket=BUCKET, Key="a/never.jpg", Body=DiesMidway())
    assert sorted(os.listdir(bucket / "a")) == [".tmp-feedface", "b.jpg"]     # its own temp file is gone


def test_files_copied_in_by_hand_are_objects_with_their_md5(s3, tmp_path):
    source = tmp_path / "imagefolder"
    images = {f"{breed}/{i}.jpg": os.urandom(100 + i) for breed in ("001.Akita", "002.Beagle") for i in range(3)}
    for name, data in images.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    shutil.copytree(source, s3.prefix_path(BUCKET, "datasets/dogs/train/"))

    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/dogs/train/")["Contents"]
    assert [(item["Key"], item["Size"], item["ETag"]) for item in listing] == [
        (f"datasets/dogs/train/{name}", len(data), etag_of(data)) for name, data in sorted(images.items())]
    got = s3.get_object(Bucket=BUCKET, Key="datasets/dogs/train/001.Akita/0.jpg")
    assert (got["Body"].read(), got["ContentType"]) == (images["001.Akita/0.jpg"], "binary/octet-stream")

    replacement = tmp_path / "replacement.jpg"
    replacement.write_bytes(os.urandom(100))                      # same size, rewritten in place
    time.sleep(0.05)         # past the kernel's coarse timestamp tick, so the rewrite moves mtime and ctime
    shutil.copyfile(replacement, s3.path_of(BUCKET, "datasets/dogs/train/001.Akita/0.jpg"))
    for reader in (s3, LocalS3(tmp_path / "s3")):
        assert reader.head_object(Bucket=BUCKET, Key="datasets/dogs/train/001.Akita/0.jpg")["ETag"] == etag_of(
            replacement.read_bytes())


def test_listing_reads_no_content_once_etags_are_recorded(s3, tmp_path, monkeypatch):
    objects = {f"datasets/dogs/train/akita/{i}.jpg": os.urandom(50) for i in range(30)}
    put_all(s3, objects)
    (s3.prefix_path(BUCKET, "") / "by-hand.jpg").write_bytes(b"copied in")
    hashed = []
    real_hash = local_s3._hash_fd
    monkeypatch.setattr(local_s3, "_hash_fd", lambda fd: hashed.append(fd) or real_hash(fd))

    first = LocalS3(tmp_path / "s3").list_objects_v2(Bucket=BUCKET)["Contents"]
    assert len(hashed) == 1                   # only the file that no put described
    second = LocalS3(tmp_path / "s3").list_objects_v2(Bucket=BUCKET)["Contents"]
    assert len(hashed) == 1                   # its MD5 was recorded for the next process
    expected = {**objects, "by-hand.jpg": b"copied in"}
    assert first == second
    assert {item["Key"]: item["ETag"] for item in first} == {key: etag_of(data) for key, data in expected.items()}


def test_path_of_and_prefix_path_name_files_inside_the_bucket(s3, tmp_path):
    bucket = (tmp_path / "s3" / BUCKET).resolve()
    s3.put_object(Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=b"tar")

    assert s3.path_of(BUCKET, "code/sourcedir.tar.gz") == bucket / "code" / "sourcedir.tar.gz"
    assert s3.path_of(BUCKET, "code/sourcedir.tar.gz").read_bytes() == b"tar"
    assert s3.prefix_path(BUCKET, "datasets/dogs/train/") == bucket / "datasets" / "dogs" / "train"
    assert s3.prefix_path(BUCKET, "datasets/dogs/train") == bucket / "datasets" / "dogs" / "train"
    assert s3.prefix_path(BUCKET, "") == bucket
    assert failure(lambda: s3.prefix_path(BUCKET, "../")).response["Error"]["Code"] == "InvalidArgument"
    assert failure(lambda: s3.prefix_path("no-such-bucket", "x/")).response["Error"]["Code"] == "NoSuchBucket"
    # an s3:// URI names the same file or folder, as a job's channel, source package or model archive
    assert s3.path_of_uri(f"s3://{BUCKET}/code/sourcedir.tar.gz").read_bytes() == b"tar"
    assert s3.path_of_uri(f"s3://{BUCKET}/datasets/dogs/train/") == bucket / "datasets" / "dogs" / "train"
    assert s3.path_of_uri(f"s3://{BUCKET}") == bucket
    with pytest.raises(ValueError, match="not an s3:// URI"):
        s3.path_of_uri(f"{BUCKET}/code/sourcedir.tar.gz")


# --- the same answers as boto3 against S3 (moto) -----------------------------------------------------

def scenario(s3) -> dict:
    """One small session of the calls the project makes; what it observes, free of request ids and times."""
    seen = {"create": s3.create_bucket(Bucket=BUCKET)["Location"]}
    objects = {"a/x.jpg": b"jpeg-1", "a-c": b"dash", "z": b"zed", "a/b/c.txt": b"deep", "é/ü.txt": b"unicode",
               "batch/1/_READY": b"{}", "a/b-": b"dash2"}
    seen["put"] = {key: s3.put_object(Bucket=BUCKET, Key=key, Body=body,
                                      ContentType="image/jpeg" if key.endswith(".jpg") else "text/plain")["ETag"]
                   for key, body in objects.items()}
    got = s3.get_object(Bucket=BUCKET, Key="a/x.jpg")
    seen["get"] = (got["Body"].read(), got["ETag"], got["ContentLength"], got["ContentType"], got["Metadata"])
    head = s3.head_object(Bucket=BUCKET, Key="z")
    seen["head"] = (head["ETag"], head["ContentLength"], head["ContentType"], head["Metadata"])

    listing = s3.list_objects_v2(Bucket=BUCKET)
    seen["list"] = [(item["Key"], item["Size"], item["ETag"], item["StorageClass"]) for item in listing["Contents"]]
    seen["list fields"] = sorted(listing)
    seen["list values"] = [listing[name] for name in ("IsTruncated", "KeyCount", "Name", "Prefix", "MaxKeys")]
    empty = s3.list_objects_v2(Bucket=BUCKET, Prefix="nothing/")
    seen["empty"] = (sorted(empty), empty["KeyCount"], empty["IsTruncated"])
    seen["partial prefix"] = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="a/b")["Contents"]]
    seen["start after"] = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, StartAfter="a/b-")["Contents"]]

    pages, request = [], {"Bucket": BUCKET, "Delimiter": "/", "MaxKeys": 2}
    while True:
        page = s3.list_objects_v2(**request)
        fields = sorted(set(page) - {"ContinuationToken"})      # S3 echoes the token; moto does not
        pages.append(([item["Key"] for item in page.get("Contents", [])], page.get("CommonPrefixes"),
                      page["KeyCount"], page["IsTruncated"], fields))
        if not page["IsTruncated"]:
            break
        request["ContinuationToken"] = page["NextContinuationToken"]
    seen["delimiter pages"] = pages
    seen["paginator"] = [[item["Key"] for item in page.get("Contents", [])] for page in
                         s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 3})]

    def error(call):
        failed = failure(call)
        return (failed.response["Error"]["Code"], failed.response["ResponseMetadata"]["HTTPStatusCode"],
                failed.operation_name, str(failed))

    seen["head missing"] = error(lambda: s3.head_object(Bucket=BUCKET, Key="missing"))
    seen["get missing"] = error(lambda: s3.get_object(Bucket=BUCKET, Key="missing"))
    seen["get missing bucket"] = error(lambda: s3.get_object(Bucket="missing-bucket", Key="missing"))
    seen["head missing bucket"] = error(lambda: s3.head_bucket(Bucket="missing-bucket"))
    seen["if none match"] = error(lambda: s3.put_object(Bucket=BUCKET, Key="z", Body=b"x", IfNoneMatch="*"))
    seen["if match stale"] = error(lambda: s3.put_object(Bucket=BUCKET, Key="z", Body=b"x", IfMatch=etag_of(b"old")))
    seen["if match missing"] = error(lambda: s3.put_object(Bucket=BUCKET, Key="new", Body=b"x",
                                                           IfMatch=etag_of(b"old")))[:3]
    seen["if match"] = s3.put_object(Bucket=BUCKET, Key="z", Body=b"zed2", IfMatch=seen["put"]["z"])["ETag"]
    seen["delete missing"] = s3.delete_object(Bucket=BUCKET, Key="missing")["ResponseMetadata"]["HTTPStatusCode"]
    seen["copy"] = s3.copy_object(Bucket=BUCKET, Key="copy.jpg",
                                  CopySource={"Bucket": BUCKET, "Key": "a/x.jpg"})["CopyObjectResult"]["ETag"]
    seen["copy content type"] = s3.head_object(Bucket=BUCKET, Key="copy.jpg")["ContentType"]
    return seen


def test_the_local_bucket_answers_like_boto3_against_s3(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        on_s3 = scenario(boto3.client("s3", region_name="us-east-1"))
    locally = scenario(LocalS3(tmp_path / "s3"))

    assert locally == on_s3
    assert on_s3["list"][0][0] == "a-c" and on_s3["if none match"][0] == "PreconditionFailed"   # a real scenario


# --- the control plane's state store on it -----------------------------------------------------------

def test_the_state_store_saves_loads_and_refuses_a_stale_write(s3):
    from chalicelib.control import StateConflict, StateStore
    from chalicelib.state import PipelineState

    store = StateStore(s3, BUCKET, "pipeline/state.json")
    state, etag = store.load()
    assert (state, etag) == (PipelineState(), None)

    store.save(state, None)
    loaded, first = store.load()
    assert loaded == state and first == s3.head_object(Bucket=BUCKET, Key="pipeline/state.json")["ETag"]
    loaded.events_seen.append("event-1")
    store.save(loaded, first)
    again, second = store.load()
    assert again.events_seen == ["event-1"] and second != first

    with pytest.raises(StateConflict):
        store.save(again, first)             # written over a version that is gone
    with pytest.raises(StateConflict):
        store.save(again, None)              # "create" when it exists
    assert store.load() == (again, second)
