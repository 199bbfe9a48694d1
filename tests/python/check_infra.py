"""Checks infra/kvs-edge.yaml beyond what cfn-lint checks: least privilege (no wildcard
actions in Allow statements; Resource "*" only where the API has no resource), the clip
bucket's protections, and devices scoped to their own streams and topics. Prints
"infra: ok" or fails with the reasons."""
import sys

from cfnlint.decode import decode

template, matches = decode(sys.argv[1])
assert not matches, matches
resources = template["Resources"]
problems = []

# Statements that may name Resource "*": account-level APIs without resource types.
STAR_OK = {"mediaconvert:DescribeEndpoints"}


def statements(doc):
    for s in doc.get("Statement", []):
        if isinstance(s, dict) and "Fn::If" in s:
            s = s["Fn::If"][1]
        yield s


def as_list(v):
    return v if isinstance(v, list) else [v]


for name, r in resources.items():
    docs = []
    props = r.get("Properties", {})
    if r["Type"] == "AWS::IAM::Role":
        docs += [p["PolicyDocument"] for p in props.get("Policies", [])]
    if r["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IoT::Policy"):
        docs.append(props["PolicyDocument"])
    for doc in docs:
        for s in statements(doc):
            if s.get("Effect") != "Allow":
                continue
            actions = as_list(s["Action"])
            for a in actions:
                if "*" in a:
                    problems.append(f"{name}: wildcard action {a}")
            if s.get("Resource") == "*" and not set(actions) <= STAR_OK:
                problems.append(f"{name}: Resource '*' for {actions}")

bucket = resources["ClipBucket"]["Properties"]
block = bucket["PublicAccessBlockConfiguration"]
if not all(block[k] is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")):
    problems.append("ClipBucket: public access not fully blocked")
if "BucketEncryption" not in bucket:
    problems.append("ClipBucket: no default encryption")
rules = bucket["LifecycleConfiguration"]["Rules"]
if not any("ExpirationInDays" in r for r in rules):
    problems.append("ClipBucket: no expiry")
if not any("AbortIncompleteMultipartUpload" in r for r in rules):
    problems.append("ClipBucket: incomplete uploads are kept")

device = resources["DeviceRole"]["Properties"]["Policies"][0]["PolicyDocument"]
for s in statements(device):
    if "${!credentials-iot:ThingName}" not in str(s["Resource"]):
        problems.append("DeviceRole: a statement not scoped to the calling thing")
    if "kinesisvideo:GetClip" in as_list(s["Action"]):
        problems.append("DeviceRole: devices need not read clips")
iot = resources["DevicePolicy"]["Properties"]["PolicyDocument"]
for s in statements(iot):
    if s["Action"] == "iot:AssumeRoleWithCertificate":
        continue
    for res in as_list(s["Resource"]):
        if "${!iot:Connection.Thing.ThingName}" not in str(res):
            problems.append(f"DevicePolicy: {s['Action']} on {res} is not scoped to the thing")

# The archiver pulling windows: upload requests out, availability and answers in.
pull = resources["ArchiverPullPolicy"]["Properties"]["PolicyDocument"]
for s in statements(pull):
    for res in as_list(s["Resource"]):
        text = res.get("Fn::Sub", "") if isinstance(res, dict) else str(res)
        if s["Action"] == "iot:Connect":
            if "${!iot:Connection.Thing.ThingName}" not in text:
                problems.append("ArchiverPullPolicy: connects as any client id")
        elif s["Action"] == "iot:Publish":
            if not text.endswith("/upload/set"):
                problems.append(f"ArchiverPullPolicy: publishes beyond upload requests: {text}")
        elif not text.endswith(("/available", "/upload/events", "/upload/rejected")):
            problems.append(f"ArchiverPullPolicy: {s['Action']} beyond availability and upload answers: {text}")

archiver = resources["ArchiverPolicy"]["Properties"]["PolicyDocument"]
for s in statements(archiver):
    if "s3:DeleteObject" in as_list(s["Action"]) and "/*.error.json" not in str(s["Resource"]):
        problems.append(f"ArchiverPolicy: may delete more than failure records: {s['Resource']}")

for s in statements(archiver):
    actions = [a for a in as_list(s["Action"]) if a.startswith("iot:")]
    if any(a not in ("iot:Publish", "iot:GetRetainedMessage") for a in actions):
        problems.append(f"ArchiverPolicy: more of AWS IoT than pulling needs: {actions}")
    for res in as_list(s["Resource"]) if actions else []:
        text = res.get("Fn::Sub", "") if isinstance(res, dict) else str(res)
        if "iot:Publish" in actions and not text.endswith("/upload/set"):
            problems.append(f"ArchiverPolicy: publishes to AWS IoT beyond upload requests: {text}")
        if "iot:GetRetainedMessage" in actions and not text.endswith("/available"):
            problems.append(f"ArchiverPolicy: reads retained messages beyond availability: {text}")

read_streams = [a for s in statements(archiver) for a in as_list(s["Action"]) if a.startswith("kinesisvideo:")]
if "kinesisvideo:ListTagsForStream" not in read_streams:
    problems.append("ArchiverPolicy: cannot read stream tags (pull's stream-to-device mapping)")
if any(a in read_streams for a in ("kinesisvideo:TagStream", "kinesisvideo:UntagStream", "kinesisvideo:PutMedia")):
    problems.append(f"ArchiverPolicy: writes to streams: {read_streams}")

rule = resources["AlarmRule"]["Properties"]["EventPattern"]
if rule["detail"]["state"]["value"] != ["ALARM"]:
    problems.append("AlarmRule: must match transitions into ALARM only")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print("infra: ok")
