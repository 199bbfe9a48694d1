//! S3 Batch Operations, the pure part: the "Invoke AWS Lambda function" request (schemas
//! 1.0 and 2.0) read into tasks, the response S3 Batch Operations expects, with the
//! per-task result codes of its completion report (Succeeded, TemporaryFailure,
//! PermanentFailure), and our replay's completion report rows in the same spirit. Keys in
//! manifests and reports are URL-encoded, as S3 Batch Operations and S3 Inventory write them.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
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
    /// The Batch Operations job's id: one replay run per job.
    pub job_id: Option<String>,
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

    pub fn parse(s: &str) -> Option<ResultCode> {
        [
            ResultCode::Succeeded,
            ResultCode::TemporaryFailure,
            ResultCode::PermanentFailure,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Characters kept as they are in an encoded key: letters, digits, `-_.~` and `/`.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// A key as manifests and reports carry it (URL-encoded).
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_SET).to_string()
}

/// A key from a manifest or an inventory (URL-encoded; `+` is a space).
pub fn decode_key(encoded: &str) -> Result<String, String> {
    percent_decode_str(&encoded.replace('+', " "))
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|e| format!("key {encoded:?}: not URL-encoded UTF-8: {e}"))
}

/// The columns of the replay's completion report, S3 Batch Operations' own (no header row, as
/// theirs): tools built for their reports read ours. As in the rows S3 writes, column 5
/// holds the HTTP status (200: the task ran) and column 6 the result code, although their
/// manifest's ReportSchema names the two the other way round; the MediaConvert job id is in
/// the ResultMessage (`submitted: job 1700000000000-abc123`).
pub const REPORT_SCHEMA: &str =
    "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage";

/// One row of the completion report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub bucket: String,
    pub key: String,
    pub version: Option<String>,
    pub code: ResultCode,
    pub result: String,
    pub job: Option<String>,
}

/// Where the job id starts in a ResultMessage.
const JOB_MARK: &str = ": job ";

impl ReportRow {
    /// The CSV fields, in the order S3 Batch Operations writes them.
    pub fn fields(&self) -> [String; 7] {
        [
            self.bucket.clone(),
            encode_key(&self.key),
            self.version.clone().unwrap_or_default(),
            if self.code == ResultCode::Succeeded {
                "succeeded"
            } else {
                "failed"
            }
            .into(),
            "200".into(),
            self.code.as_str().into(),
            self.message(),
        ]
    }

    /// The ResultMessage: what happened, and the job when there is one.
    pub fn message(&self) -> String {
        match &self.job {
            Some(job) => format!("{}{JOB_MARK}{job}", self.result),
            None => self.result.clone(),
        }
    }

    /// A row read back (to resume); the problem names the column. Rows of the report's
    /// first format (result code in column 5, the job id in column 7) read too.
    pub fn from_fields(fields: &[&str]) -> Result<ReportRow, String> {
        if fields.len() != 7 {
            return Err(format!(
                "{} columns, expected 7 ({REPORT_SCHEMA})",
                fields.len()
            ));
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let (code, result, job) = match (ResultCode::parse(fields[5]), ResultCode::parse(fields[4]))
        {
            (Some(code), _) => {
                let (result, job) = match fields[6].rsplit_once(JOB_MARK) {
                    Some((result, job)) => (result.to_string(), opt(job)),
                    None => (fields[6].to_string(), None),
                };
                (code, result, job)
            }
            (None, Some(code)) => (code, fields[5].to_string(), opt(fields[6])),
            (None, None) => {
                return Err(format!("ResultCode: {:?} is not a result code", fields[5]));
            }
        };
        Ok(ReportRow {
            bucket: fields[0].to_string(),
            key: decode_key(fields[1])?,
            version: opt(fields[2]),
            code,
            result,
            job,
        })
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
        job_id: v["job"]["id"].as_str().map(str::to_string),
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
        let path = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../tests/fixtures/aws-events")
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
    fn report_rows_read_back_as_written() {
        let row = ReportRow {
            bucket: "clips".into(),
            key: "clips/cam 1/2024/x+y,\"z\".mp4".into(),
            version: None,
            code: ResultCode::TemporaryFailure,
            result: "MediaConvert CreateJob: 429 TooManyRequestsException: slow down, please"
                .into(),
            job: None,
        };
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(vec![]);
        w.write_record(row.fields()).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert!(
            text.starts_with(
                "clips,clips/cam%201/2024/x%2By%2C%22z%22.mp4,,failed,200,TemporaryFailure,"
            ),
            "{text}"
        );
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let rec = r.records().next().unwrap().unwrap();
        let fields: Vec<&str> = rec.iter().collect();
        assert_eq!(ReportRow::from_fields(&fields).unwrap(), row);
        assert!(
            ReportRow::from_fields(&fields[..6])
                .unwrap_err()
                .contains("6 columns")
        );
        let mut bad = fields.clone();
        bad[5] = "Maybe";
        assert!(
            ReportRow::from_fields(&bad)
                .unwrap_err()
                .starts_with("ResultCode")
        );
    }

    #[test]
    fn rows_carry_the_job_in_the_message_and_old_rows_still_read() {
        let row = ReportRow {
            bucket: "clips".into(),
            key: "clips/cam1/a.mp4".into(),
            version: Some("v1".into()),
            code: ResultCode::Succeeded,
            result: "submitted".into(),
            job: Some("1700000000000-abc123".into()),
        };
        let fields = row.fields();
        assert_eq!(
            fields[3..],
            [
                "succeeded",
                "200",
                "Succeeded",
                "submitted: job 1700000000000-abc123"
            ]
        );
        let back: Vec<&str> = fields.iter().map(String::as_str).collect();
        assert_eq!(ReportRow::from_fields(&back).unwrap(), row);
        // The first format: code, text, job id.
        let old = [
            "clips",
            "clips/cam1/a.mp4",
            "v1",
            "succeeded",
            "Succeeded",
            "submitted",
            "1700000000000-abc123",
        ];
        assert_eq!(ReportRow::from_fields(&old).unwrap(), row);
    }

    #[test]
    fn the_published_completion_report_rows_decode() {
        // S3 Batch Operations' own report (bucket, key, version, status, ...) keys decode.
        let text = std::fs::read_to_string(
            std::path::PathBuf::from(
                std::env::var("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../tests/fixtures/aws-events/s3-batch-ops-completion-report-failed-tasks.csv"),
        )
        .unwrap();
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let keys: Vec<String> = r
            .records()
            .map(|rec| decode_key(&rec.unwrap()[1]).unwrap())
            .collect();
        assert_eq!(keys.len(), 6);
        assert_eq!(keys[0], "image_14975");
        // Whole rows of S3's own report read as ours do: the same columns.
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        for rec in r.records() {
            let rec = rec.unwrap();
            let fields: Vec<&str> = rec.iter().collect();
            let row = ReportRow::from_fields(&fields).unwrap();
            assert_eq!(
                (row.bucket.as_str(), row.code),
                ("awsexamplebucket1", ResultCode::PermanentFailure)
            );
            assert!(row.result.starts_with("Lambda returned function error"));
        }
        assert_eq!(decode_key("a+b%2Fc").unwrap(), "a b/c");
        assert!(decode_key("%FF").is_err());
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
