//! S3 Batch Operations, the pure part: the "Invoke AWS Lambda function" request (schemas
//! 1.0 and 2.0) read into tasks, and the response S3 Batch Operations expects, with the
//! per-task result codes of its completion report (Succeeded, TemporaryFailure,
//! PermanentFailure). Replaying stored clips through the transcoding hand-off is built on
//! this (the batch replay issue).

use serde_json::{Value, json};

/// One object to work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub task_id: String,
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

/// An invocation: its id and schema (echoed in the response), the job's user arguments
/// (schema 2.0) and the tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub schema: String,
    pub invocation_id: String,
    pub user_arguments: Value,
    pub tasks: Vec<Task>,
}

/// A task's outcome, as the completion report records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Succeeded,
    /// Retried by S3 Batch Operations.
    TemporaryFailure,
    PermanentFailure,
}

impl ResultCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultCode::Succeeded => "Succeeded",
            ResultCode::TemporaryFailure => "TemporaryFailure",
            ResultCode::PermanentFailure => "PermanentFailure",
        }
    }
}

fn text(v: &Value, field: &str) -> Result<String, String> {
    v[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("{field}: missing"))
}

/// True when `v` looks like an S3 Batch Operations invocation.
pub fn is_invocation(v: &Value) -> bool {
    v.get("invocationSchemaVersion").is_some() && v.get("tasks").is_some()
}

/// Reads an invocation; every problem names the field.
pub fn parse(v: &Value) -> Result<Invocation, String> {
    let schema = text(v, "invocationSchemaVersion")?;
    if schema != "1.0" && schema != "2.0" {
        return Err(format!(
            "invocationSchemaVersion: {schema:?} is not 1.0 or 2.0"
        ));
    }
    let invocation_id = text(v, "invocationId")?;
    let tasks = v["tasks"]
        .as_array()
        .ok_or("tasks: must be an array")?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = |e: String| format!("tasks[{i}].{e}");
            let bucket = match (t["s3Bucket"].as_str(), t["s3BucketArn"].as_str()) {
                (Some(b), _) => b.to_string(),
                // arn:aws:s3:::bucket (or arn:aws:s3:region:account:bucket, as in the docs).
                (None, Some(arn)) => arn.rsplit(':').next().unwrap_or_default().to_string(),
                (None, None) => return Err(at("s3Bucket: missing".into())),
            };
            if bucket.is_empty() {
                return Err(at("s3Bucket: empty".into()));
            }
            Ok(Task {
                task_id: text(t, "taskId").map_err(at)?,
                key: text(t, "s3Key").map_err(at)?,
                version_id: t["s3VersionId"].as_str().map(str::to_string),
                bucket,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Invocation {
        user_arguments: v["job"]["userArguments"].clone(),
        schema,
        invocation_id,
        tasks,
    })
}

/// The response for `invocation` with one `(task id, code, result string)` per task.
pub fn response(invocation: &Invocation, results: &[(String, ResultCode, String)]) -> Value {
    json!({
        "invocationSchemaVersion": invocation.schema,
        "treatMissingKeysAs": "PermanentFailure",
        "invocationId": invocation.invocation_id,
        "results": results
            .iter()
            .map(|(id, code, text)| json!({"taskId": id, "resultCode": code.as_str(), "resultString": text}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/aws-events")
            .join(name);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn both_schemas_of_the_published_invocations() {
        for (name, bucket, key, version) in [
            (
                "s3-batch-ops-lambda-invocation-schema-1.0.awsdocs.json",
                "awsexamplebucket1",
                "customerImage1.jpg",
                Some("1"),
            ),
            (
                "s3-batch-ops-lambda-invocation-schema-1.0.aws-lambda-go.json",
                "awsexamplebucket",
                "customerImage1.jpg",
                Some("1"),
            ),
            (
                "s3-batch-ops-lambda-invocation-schema-1.0.powertools.json",
                "powertools-dataset",
                "prefix/dataset/dataset.20231222.json.gz",
                Some("1"),
            ),
            (
                "s3-batch-ops-lambda-invocation-schema-2.0.aws-lambda-go.json",
                "awsexamplebucket",
                "customerImage1.jpg",
                Some("jbo9_jhdPEyB4RrmOxWS0kU0EoNrU_oI"),
            ),
            (
                "s3-batch-ops-lambda-invocation-schema-2.0.powertools.json",
                "powertools-dataset",
                "prefix/dataset/dataset.20231222.json.gz",
                None,
            ),
        ] {
            let v = fixture(name);
            assert!(is_invocation(&v), "{name}");
            let inv = parse(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(inv.tasks.len(), 1, "{name}");
            let t = &inv.tasks[0];
            assert_eq!(
                (t.bucket.as_str(), t.key.as_str(), t.version_id.as_deref()),
                (bucket, key, version),
                "{name}"
            );
        }
        let inv = parse(&fixture(
            "s3-batch-ops-lambda-invocation-schema-2.0.aws-lambda-go.json",
        ))
        .unwrap();
        assert_eq!(inv.user_arguments["k1"], "v1");
    }

    #[test]
    fn the_response_is_the_documented_one() {
        let inv = parse(&fixture(
            "s3-batch-ops-lambda-invocation-schema-1.0.awsdocs.json",
        ))
        .unwrap();
        let r = response(
            &inv,
            &[(
                "dGFza2lkZ29lc2hlcmUK".into(),
                ResultCode::Succeeded,
                "[\"Mary Major\", \"John Stiles\"]".into(),
            )],
        );
        assert_eq!(
            r,
            fixture("s3-batch-ops-lambda-response.aws-lambda-go.json")
        );
    }

    #[test]
    fn bad_invocations_name_the_field() {
        for (v, field) in [
            (
                json!({"invocationSchemaVersion": "3.0", "invocationId": "x", "tasks": []}),
                "invocationSchemaVersion",
            ),
            (
                json!({"invocationSchemaVersion": "2.0", "tasks": []}),
                "invocationId",
            ),
            (
                json!({"invocationSchemaVersion": "2.0", "invocationId": "x", "tasks": [{"taskId": "t", "s3Key": "k"}]}),
                "tasks[0].s3Bucket",
            ),
            (
                json!({"invocationSchemaVersion": "2.0", "invocationId": "x", "tasks": [{"s3Bucket": "b", "s3Key": "k"}]}),
                "tasks[0].taskId",
            ),
        ] {
            let e = parse(&v).unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
    }
}
