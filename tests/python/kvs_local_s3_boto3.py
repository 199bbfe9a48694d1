"""boto3 against kvs-local's S3 and MediaConvert where S3's and MediaConvert's promises are
easy to break: keys up to 1024 bytes, listings of keys XML cannot carry, overwrites that
readers never see half of, and one job per ClientRequestToken even for simultaneous calls.

Run by tests/tests/kvs_local_s3.rs:

    python kvs_local_s3_boto3.py --endpoint URL --bucket NAME --queue PAUSED_QUEUE

Every check is an assert; the script exits non-zero on the first failure.
"""

import argparse
import hashlib
import threading

import boto3
from botocore.config import Config

KEY, SECRET, REGION = "kvslocal", "kvslocal-secret", "us-east-1"


def client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def listed(s3, bucket, prefix):
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--queue", required=True)
    a = p.parse_args()
    s3 = client("s3", a.endpoint)
    b = a.bucket

    # Keys up to 1024 bytes (S3's limit), one with a 300-byte segment.
    for key in ["clips/" + "k" * 149 + ".mp4", "clips/" + "/".join(["d" * 200] * 4) + "/" + "x" * 206 + ".mp4", "y" * 300]:
        assert len(key.encode()) <= 1024, len(key)
        body = hashlib.sha256(key.encode()).digest() * 100
        s3.put_object(Bucket=b, Key=key, Body=body, Metadata={"n": str(len(key))})
        head = s3.head_object(Bucket=b, Key=key)
        assert head["ContentLength"] == len(body), head
        assert head["Metadata"]["n"] == str(len(key))
        assert s3.get_object(Bucket=b, Key=key)["Body"].read() == body
        assert key in listed(s3, b, key[:20]), f"{len(key)}-byte key not listed"
        s3.delete_object(Bucket=b, Key=key)
        assert key not in listed(s3, b, key[:20])
    print("ok keys up to 1024 bytes", flush=True)

    # Keys XML 1.0 cannot carry: boto3 asks for EncodingType=url and decodes.
    odd = "odd/a b+c/\u00e9\x01.mp4"
    s3.put_object(Bucket=b, Key=odd, Body=b"x")
    assert listed(s3, b, "odd/") == [odd], listed(s3, b, "odd/")
    page = s3.list_objects_v2(Bucket=b, Prefix="odd/", Delimiter="/")
    assert [c["Prefix"] for c in page["CommonPrefixes"]] == ["odd/a b+c/"], page
    print("ok EncodingType=url listings", flush=True)

    # An overwrite is atomic for readers: body, ETag and metadata always belong together.
    versions = {v: (bytes([v]) * 2_000_000) for v in (ord("a"), ord("b"))}
    s3.put_object(Bucket=b, Key="race", Body=versions[ord("a")], Metadata={"v": "a"})
    stop = threading.Event()
    problems = []

    def writer():
        i = 0
        while not stop.is_set():
            v = (ord("a"), ord("b"))[i % 2]
            s3w.put_object(Bucket=b, Key="race", Body=versions[v], Metadata={"v": chr(v)})
            i += 1

    def reader():
        for _ in range(25):
            got = s3r.get_object(Bucket=b, Key="race")
            data = got["Body"].read()
            v = got["Metadata"]["v"]
            if data != versions[ord(v)]:
                problems.append(f"metadata says {v}, body is {len(data)} bytes of {set(data)}")
            if got["ETag"].strip('"') != hashlib.md5(data).hexdigest():
                problems.append("the ETag is not the body's")

    s3w, s3r = client("s3", a.endpoint), client("s3", a.endpoint)
    w = threading.Thread(target=writer)
    w.start()
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    w.join()
    assert not problems, problems[:3]
    print("ok overwrites are atomic for readers", flush=True)

    # One job per ClientRequestToken, also for calls at the same moment.
    mc = client("mediaconvert", a.endpoint)
    barrier = threading.Barrier(8)
    ids = []

    def create():
        c = client("mediaconvert", a.endpoint)
        barrier.wait()
        job = c.create_job(
            Role="arn:aws:iam::000000000000:role/MediaConvert",
            Queue=f"arn:aws:mediaconvert:{REGION}:000000000000:queues/{a.queue}",
            ClientRequestToken="one-token",
            Settings={
                "Inputs": [{"FileInput": f"s3://{b}/race"}],
                "OutputGroups": [{"OutputGroupSettings": {"Type": "FILE_GROUP_SETTINGS",
                                  "FileGroupSettings": {"Destination": f"s3://{b}/out/"}}},],
            },
        )["Job"]
        ids.append(job["Id"])

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1, ids
    jobs = mc.list_jobs()["Jobs"]
    assert [j["Id"] for j in jobs] == [ids[0]], [j["Id"] for j in jobs]
    print("ok one job per ClientRequestToken", flush=True)
    print("boto3: kvs-local S3 and MediaConvert promises checked", flush=True)


if __name__ == "__main__":
    main()
