"""boto3 against kvs-local: a second, independent AWS client for every operation.

Run by tests/tests/kvs_local_boto3.rs after it has streamed fragments into STREAM:

    python kvs_local_boto3.py --endpoint URL --stream NAME --start-ms MS --fragments N --out DIR

Every check is an assert; the script exits non-zero on the first failure and prints what
it checked.
"""

import argparse
import os
import sys
from datetime import datetime, timezone

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

KEY, SECRET, REGION = "kvslocal", "kvslocal-secret", "us-east-1"


def client(service, endpoint, secret=SECRET):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def expect_error(code, status, fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), f"expected {code}/{status}, got {got}: {e}"
        return e
    raise AssertionError(f"expected {code} from {fn.__name__}")


def check(name):
    print(f"ok {name}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--start-ms", type=int, required=True)
    p.add_argument("--fragments", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    kvs = client("kinesisvideo", a.endpoint)

    # Control plane.
    arn = kvs.create_stream(StreamName="boto-made", DataRetentionInHours=2, Tags={"by": "boto3"})["StreamARN"]
    assert arn.startswith("arn:aws:kinesisvideo:us-east-1:"), arn
    check("CreateStream")
    info = kvs.describe_stream(StreamARN=arn)["StreamInfo"]
    assert info["StreamName"] == "boto-made" and info["Status"] == "ACTIVE", info
    assert info["DataRetentionInHours"] == 2
    assert isinstance(info["CreationTime"], datetime)
    check("DescribeStream")
    names = [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]]
    assert sorted(names) == sorted(["boto-made", a.stream]), names
    page = kvs.list_streams(MaxResults=1)
    assert len(page["StreamInfoList"]) == 1 and "NextToken" in page
    check("ListStreams")
    kvs.tag_stream(StreamARN=arn, Tags={"camera": "back"})
    assert kvs.list_tags_for_stream(StreamName="boto-made")["Tags"] == {"by": "boto3", "camera": "back"}
    kvs.untag_stream(StreamARN=arn, TagKeyList=["by"])
    assert kvs.list_tags_for_stream(StreamARN=arn)["Tags"] == {"camera": "back"}
    check("TagStream/UntagStream/ListTagsForStream")
    kvs.update_data_retention(
        StreamName="boto-made",
        CurrentVersion=kvs.describe_stream(StreamName="boto-made")["StreamInfo"]["Version"],
        Operation="DECREASE_DATA_RETENTION",
        DataRetentionChangeInHours=1,
    )
    assert kvs.describe_stream(StreamName="boto-made")["StreamInfo"]["DataRetentionInHours"] == 1
    expect_error(
        "VersionMismatchException", 400, kvs.update_data_retention,
        StreamName="boto-made", CurrentVersion="stale", Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=1,
    )
    check("UpdateDataRetention")
    endpoint = kvs.get_data_endpoint(StreamName=a.stream, APIName="GET_CLIP")["DataEndpoint"]
    assert endpoint == a.endpoint, endpoint
    check("GetDataEndpoint")
    expect_error("ResourceInUseException", 400, kvs.create_stream, StreamName="boto-made")
    expect_error("ResourceNotFoundException", 404, kvs.describe_stream, StreamName="nope")
    expect_error("InvalidArgumentException", 400, kvs.create_stream, StreamName="bad name!")
    bad = client("kinesisvideo", a.endpoint, secret="wrong")
    expect_error("InvalidSignatureException", 403, bad.list_streams)
    check("error shapes")
    kvs.delete_stream(StreamARN=arn)
    expect_error("ResourceNotFoundException", 404, kvs.describe_stream, StreamARN=arn)
    check("DeleteStream")

    # Archived media on the data endpoint.
    media = client("kinesis-video-archived-media", endpoint)
    start = datetime.fromtimestamp(a.start_ms / 1000, tz=timezone.utc)
    end = datetime.fromtimestamp((a.start_ms + 3_600_000) / 1000, tz=timezone.utc)
    selector = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}}
    fragments, token = [], None
    while True:
        kw = {"NextToken": token} if token else {}
        out = media.list_fragments(StreamName=a.stream, MaxResults=2, FragmentSelector=selector, **kw)
        fragments += out["Fragments"]
        token = out.get("NextToken")
        if not token:
            break
    assert len(fragments) == a.fragments, fragments
    for f in fragments:
        assert len(f["FragmentNumber"]) == 47 and f["FragmentNumber"].isdigit(), f
        assert f["FragmentSizeInBytes"] > 0 and f["FragmentLengthInMilliseconds"] > 0, f
        assert isinstance(f["ProducerTimestamp"], datetime), f
    first = min(f["ProducerTimestamp"] for f in fragments)
    assert abs(first.timestamp() * 1000 - a.start_ms) <= 1, (first, a.start_ms)
    check("ListFragments")

    clip = media.get_clip(StreamName=a.stream, ClipFragmentSelector=selector)
    assert clip["ContentType"] == "video/mp4", clip["ContentType"]
    data = clip["Payload"].read()
    assert data[4:8] == b"ftyp", data[:16]
    path = os.path.join(a.out, "boto3-clip.mp4")
    with open(path, "wb") as f:
        f.write(data)
    print(f"clip {path} {len(data)} bytes")
    check("GetClip")
    expect_error(
        "ResourceNotFoundException", 404, media.get_clip, StreamName=a.stream,
        ClipFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
            "StartTimestamp": datetime(2001, 1, 1, tzinfo=timezone.utc),
            "EndTimestamp": datetime(2001, 1, 2, tzinfo=timezone.utc)}},
    )
    expect_error(
        "InvalidArgumentException", 400, media.get_clip, StreamName=a.stream,
        ClipFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
            "StartTimestamp": end, "EndTimestamp": start}},
    )
    check("GetClip errors")

    wanted = [fragments[0]["FragmentNumber"], "1" * 47]
    payload = media.get_media_for_fragment_list(StreamName=a.stream, Fragments=wanted)["Payload"].read()
    assert payload[:4] == b"\x1a\x45\xdf\xa3", payload[:8]
    assert wanted[0].encode() in payload and b"FRAGMENT_NOT_FOUND" in payload
    check("GetMediaForFragmentList")
    print("boto3: every kvs-local operation checked")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        raise
