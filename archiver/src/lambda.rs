//! The AWS Lambda entry point (`provided.al2023`; the binary is the `bootstrap`). It takes
//! what an alarm deployment invokes a function with: an EventBridge rule's event, the
//! CloudWatch alarm action, an SNS notification, or an SQS batch (from an event source
//! mapping, answered with a partial batch response so that only failed messages return).
//! An S3 Batch Operations invocation (schemas 1.0 and 2.0) replays its clips through the
//! transcoding hand-off and is answered with per-task result codes.
//!
//! Errors make Lambda retry: a direct invocation fails as a whole when a clip failed or the
//! event is malformed (after Lambda's retries it lands in the function's failure
//! destination); in an SQS batch only failed clips are reported, and malformed messages are
//! moved to `[sqs] dlq_url` (or dropped with an error log), since retrying cannot help them.

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tracing::error;

use crate::clip::Archiver;

/// Carries out one event's decisions; the outcomes, and whether anything failed.
async fn carry_out(archiver: &Archiver, body: &[u8]) -> Result<(Vec<Value>, bool), String> {
    let decisions = crate::decisions(&archiver.cfg, body).map_err(|e| e.to_string())?;
    let mut outcomes = Vec::new();
    let mut failed = false;
    for d in decisions {
        let (o, f) = archiver.carry_out(d).await;
        outcomes.extend(o);
        failed |= f;
    }
    Ok((outcomes, failed))
}

/// Why an invocation failed, as Lambda reports it (`errorType`, `errorMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The event is not one the archiver understands; retrying cannot help.
    MalformedEvent(String),
    /// A clip failed (its failure record is in the bucket); a retry may succeed.
    ClipFailed(String),
}

impl From<Failure> for Diagnostic {
    fn from(f: Failure) -> Diagnostic {
        let (error_type, error_message) = match f {
            Failure::MalformedEvent(m) => ("MalformedEvent", m),
            Failure::ClipFailed(m) => ("ClipFailed", m),
        };
        Diagnostic {
            error_type: error_type.into(),
            error_message,
        }
    }
}

/// One invocation.
pub async fn handle(archiver: &Archiver, event: Value) -> Result<Value, Failure> {
    if crate::batch::is_invocation(&event) {
        let inv = crate::batch::parse(&event).map_err(Failure::MalformedEvent)?;
        return Ok(crate::replay::batch_invocation(archiver, &inv).await);
    }
    let is_sqs_batch = event["Records"]
        .as_array()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r["eventSource"] == "aws:sqs"));
    if !is_sqs_batch {
        let (outcomes, failed) = carry_out(archiver, event.to_string().as_bytes())
            .await
            .map_err(Failure::MalformedEvent)?;
        if failed {
            return Err(Failure::ClipFailed(format!(
                "a clip failed (its record is in the bucket): {}",
                Value::from(outcomes)
            )));
        }
        return Ok(json!({ "outcomes": outcomes }));
    }
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for record in event["Records"].as_array().into_iter().flatten() {
        let id = record["messageId"].as_str().unwrap_or_default().to_string();
        let body = record["body"].as_str().unwrap_or_default();
        match carry_out(archiver, body.as_bytes()).await {
            Ok((o, failed)) => {
                if failed {
                    failures.push(json!({ "itemIdentifier": id }));
                }
                outcomes.extend(o);
            }
            Err(e) => {
                error!(message = %id, "malformed message: {e}");
                if let Some(dlq) = &archiver.cfg.sqs.dlq_url {
                    let sent = archiver
                        .sqs_client()
                        .send_message()
                        .queue_url(dlq)
                        .message_body(body)
                        .send()
                        .await;
                    if sent.is_err() {
                        failures.push(json!({ "itemIdentifier": id }));
                    }
                }
            }
        }
    }
    Ok(json!({ "batchItemFailures": failures, "outcomes": outcomes }))
}

/// Serves invocations until the Lambda environment ends the process.
pub async fn run(archiver: Archiver) -> Result<(), Error> {
    let archiver = &archiver;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        // Retries of throttled calls stop in time to report before the invocation ends.
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let left = std::time::Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let deadline = tokio::time::Instant::now() + left;
        // Boxed: the clip futures nest deeply enough to strain the compiler's layout queries.
        crate::retry::within(deadline, Box::pin(handle(archiver, event.payload))).await
    }))
    .await
}
