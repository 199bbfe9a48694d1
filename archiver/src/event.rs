//! Alarm events in every shape a deployment delivers, reduced to what the archiver needs:
//! which alarm entered ALARM, when, and the metric dimensions it carried. Pure.
//!
//! Shapes (samples in tests/fixtures/aws-events/):
//! - EventBridge "CloudWatch Alarm State Change" (`detail`); configuration-change and
//!   contributor events are ignored;
//! - the same event as an SQS message: a Lambda SQS event (`Records[].body`) or the
//!   ReceiveMessage API output (`Messages[].Body`);
//! - CloudWatch's alarm action invoking Lambda directly (`alarmArn` + `alarmData`);
//! - SNS alarm notifications: a Lambda SNS event (`Records[].Sns.Message`) or the raw
//!   HTTP/SQS-subscription notification (`"Type": "Notification"`).
//!
//! Only a transition into ALARM is acted on; everything else is an `Ignore` with the reason.

use chrono::{DateTime, Utc};
use serde_json::Value;
use thiserror::Error;

/// Input that is not an event at all: a clear error, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
}

/// An alarm that entered ALARM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// Where it came from: `eventbridge`, `lambda-alarm-action`, `sns`.
    pub shape: &'static str,
    /// The delivery's id (EventBridge id, SNS MessageId), when there is one.
    pub event_id: Option<String>,
    pub name: String,
    pub arn: Option<String>,
    pub reason: String,
    /// When the alarm entered ALARM (the state's timestamp).
    pub time: DateTime<Utc>,
    pub previous: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
    /// Every metric dimension the alarm's configuration names.
    pub dimensions: Vec<(String, String)>,
    /// The mute rule silencing the alarm, if any.
    pub muted_by: Option<String>,
    /// For a composite alarm: the ARNs of the alarms that set it off.
    pub triggered_by: Vec<String>,
}

impl Alarm {
    /// The same alarm transition always gives the same id, however often it is delivered.
    pub fn transition_id(&self) -> String {
        format!(
            "{}@{}",
            self.arn.as_deref().unwrap_or(&self.name),
            self.time.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        )
    }
}

/// A MediaConvert job reached a final state ("MediaConvert Job State Change").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub job_id: String,
    /// COMPLETE, ERROR or CANCELED.
    pub status: String,
    pub clip_bucket: String,
    pub clip_key: String,
    pub error: Option<String>,
    /// The event's `outputGroupDetails`, as sent.
    pub outputs: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Alarm(Box<Alarm>),
    Job(Box<JobState>),
    Ignore(String),
}

/// Parses one delivery; batches (SQS, SNS records) give one event per record.
pub fn parse(input: &[u8]) -> Result<Vec<Event>, EventError> {
    let v: Value = serde_json::from_slice(input).map_err(|e| EventError::NotJson(e.to_string()))?;
    parse_value(&v, 0)
}

fn malformed(what: &str, reason: impl Into<String>) -> EventError {
    EventError::Malformed {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Wrappers nest (SQS → EventBridge, SNS → alarm); a body is parsed again, a bounded
/// number of times.
fn parse_value(v: &Value, depth: u8) -> Result<Vec<Event>, EventError> {
    if depth > 3 {
        return Err(malformed("event", "wrapped more than three levels deep"));
    }
    let Value::Object(o) = v else {
        return Err(malformed("event", "must be a JSON object"));
    };
    if let Some(records) = o.get("Records") {
        let records = records
            .as_array()
            .ok_or_else(|| malformed("Records", "must be an array"))?;
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let what = format!("Records[{i}]");
            if let Some(sns) = r.get("Sns") {
                out.extend(sns_notification(sns, &what)?);
            } else if let Some(body) = r.get("body") {
                out.extend(nested_body(body, &format!("{what}.body"), depth)?);
            } else {
                out.push(Event::Ignore(format!(
                    "{what}: neither an SQS message nor an SNS notification"
                )));
            }
        }
        return Ok(out);
    }
    if let Some(messages) = o.get("Messages") {
        let messages = messages
            .as_array()
            .ok_or_else(|| malformed("Messages", "must be an array"))?;
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let what = format!("Messages[{i}].Body");
            let body = m.get("Body").ok_or_else(|| malformed(&what, "missing"))?;
            out.extend(nested_body(body, &what, depth)?);
        }
        return Ok(out);
    }
    if let Some(kind) = o.get("Type").and_then(Value::as_str) {
        return sns_notification(v, "notification").map(|e| {
            if e.is_empty() {
                vec![Event::Ignore(format!("SNS {kind} message"))]
            } else {
                e
            }
        });
    }
    if let Some(detail_type) = o.get("detail-type").and_then(Value::as_str) {
        return Ok(vec![eventbridge(o, detail_type)?]);
    }
    if o.contains_key("alarmData") {
        return Ok(vec![alarm_data(
            &o["alarmData"],
            "lambda-alarm-action",
            Envelope {
                event_id: None,
                arn: text(o.get("alarmArn")),
                region: text(o.get("region")),
                account: text(o.get("accountId")),
            },
        )?]);
    }
    if o.contains_key("AlarmName") && o.contains_key("NewStateValue") {
        return Ok(vec![classic(v, None)?]);
    }
    Ok(vec![Event::Ignore(
        "not an alarm event (no detail-type, alarmData, Records, Messages or AlarmName)".into(),
    )])
}

fn nested_body(body: &Value, what: &str, depth: u8) -> Result<Vec<Event>, EventError> {
    let body = body
        .as_str()
        .ok_or_else(|| malformed(what, "must be a string"))?;
    let inner: Value =
        serde_json::from_str(body).map_err(|e| malformed(what, format!("not JSON: {e}")))?;
    parse_value(&inner, depth + 1)
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
}

/// What the envelope around an alarm's data says.
struct Envelope {
    event_id: Option<String>,
    arn: Option<String>,
    region: Option<String>,
    account: Option<String>,
}

/// A MediaConvert job event: final states of jobs the archiver submitted are recorded.
fn job_state(o: &serde_json::Map<String, Value>) -> Result<Event, EventError> {
    let d = o
        .get("detail")
        .ok_or_else(|| malformed("detail", "missing"))?;
    let job_id = text(d.get("jobId")).ok_or_else(|| malformed("detail.jobId", "missing"))?;
    let status = text(d.get("status")).ok_or_else(|| malformed("detail.status", "missing"))?;
    if !["COMPLETE", "ERROR", "CANCELED"].contains(&status.as_str()) {
        return Ok(Event::Ignore(format!(
            "MediaConvert job {job_id} is {status}: only final states are recorded"
        )));
    }
    let meta = d.get("userMetadata");
    let (Some(clip_bucket), Some(clip_key)) = (
        text(meta.and_then(|m| m.get("clip_bucket"))),
        text(meta.and_then(|m| m.get("clip_key"))),
    ) else {
        return Ok(Event::Ignore(format!(
            "MediaConvert job {job_id} was not submitted by kvs-edge (no clip_bucket/clip_key user metadata)"
        )));
    };
    let error = (status != "COMPLETE").then(|| {
        format!(
            "{} {}",
            d.get("errorCode").map(Value::to_string).unwrap_or_default(),
            text(d.get("errorMessage")).unwrap_or_else(|| status.to_lowercase())
        )
        .trim()
        .to_string()
    });
    Ok(Event::Job(Box::new(JobState {
        job_id,
        status,
        clip_bucket,
        clip_key,
        error,
        outputs: d.get("outputGroupDetails").cloned().unwrap_or(Value::Null),
    })))
}

fn eventbridge(o: &serde_json::Map<String, Value>, detail_type: &str) -> Result<Event, EventError> {
    match detail_type {
        "MediaConvert Job State Change" => return job_state(o),
        "CloudWatch Alarm State Change" => {}
        "CloudWatch Alarm Configuration Change" => {
            return Ok(Event::Ignore(
                "a configuration change, not a state change".into(),
            ));
        }
        "CloudWatch Alarm Contributor State Change" => {
            return Ok(Event::Ignore(
                "a contributor state change (the alarm's own state change is a separate event)"
                    .into(),
            ));
        }
        other => {
            return Ok(Event::Ignore(format!(
                "detail-type {other:?} is not an alarm state change"
            )));
        }
    }
    let envelope = Envelope {
        event_id: text(o.get("id")),
        arn: o
            .get("resources")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(Value::as_str)
            .map(str::to_string),
        region: text(o.get("region")),
        account: text(o.get("account")),
    };
    // A sample in the wild carries the data under alarmData in an EventBridge envelope.
    let data = o
        .get("detail")
        .or_else(|| o.get("alarmData"))
        .ok_or_else(|| malformed("detail", "missing"))?;
    alarm_data(data, "eventbridge", envelope)
}

/// Timestamps as CloudWatch writes them (`2019-10-02T17:04:40.989+0000`), RFC 3339, and with
/// stray spaces (some published samples have them).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    DateTime::parse_from_rfc3339(&s)
        .or_else(|_| DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .or_else(|_| DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn alarm_data(d: &Value, shape: &'static str, env: Envelope) -> Result<Event, EventError> {
    if !d.is_object() {
        return Err(malformed(
            if shape == "eventbridge" {
                "detail"
            } else {
                "alarmData"
            },
            "must be an object",
        ));
    }
    let name = text(d.get("alarmName")).ok_or_else(|| malformed("alarmName", "missing"))?;
    let state = d
        .get("state")
        .ok_or_else(|| malformed("state", "missing"))?;
    let value = text(state.get("value")).ok_or_else(|| malformed("state.value", "missing"))?;
    let previous = d.get("previousState").and_then(|p| text(p.get("value")));
    if let Some(why) = not_a_transition(&name, &value, previous.as_deref()) {
        return Ok(Event::Ignore(why));
    }
    let time = time_of(state.get("timestamp"), "state.timestamp")?;
    let mut dimensions = Vec::new();
    if let Some(metrics) = d
        .pointer("/configuration/metrics")
        .and_then(Value::as_array)
    {
        for m in metrics {
            if let Some(Value::Object(dims)) = m.pointer("/metricStat/metric/dimensions") {
                for (k, v) in dims {
                    if let Some(v) = v.as_str() {
                        dimensions.push((k.clone(), v.to_string()));
                    }
                }
            }
        }
    }
    Ok(Event::Alarm(Box::new(Alarm {
        shape,
        event_id: env.event_id,
        arn: env.arn.map(|a| clean_arn(&a)),
        name,
        reason: text(state.get("reason")).unwrap_or_default(),
        time,
        previous,
        region: env.region,
        account: env.account,
        dimensions,
        muted_by: d
            .pointer("/muteDetail/mutedByArn")
            .and_then(Value::as_str)
            .map(str::to_string),
        triggered_by: triggering_alarms(state),
    })))
}

/// Why a state change is not one the archiver acts on (only a transition into ALARM is).
fn not_a_transition(name: &str, value: &str, previous: Option<&str>) -> Option<String> {
    if value != "ALARM" {
        return Some(format!("{name}: the state is {value}, not ALARM"));
    }
    (previous == Some("ALARM"))
        .then(|| format!("{name}: already in ALARM (ALARM -> ALARM is not a transition)"))
}

/// The time in `field`, which must be there.
fn time_of(v: Option<&Value>, field: &str) -> Result<DateTime<Utc>, EventError> {
    let stamp = text(v).ok_or_else(|| malformed(field, "missing"))?;
    parse_time(&stamp).ok_or_else(|| malformed(field, format!("{stamp:?} is not a time")))
}

/// A composite alarm's `reasonData` names the child alarms that are in ALARM.
fn triggering_alarms(state: &Value) -> Vec<String> {
    let Some(reason_data) = state.get("reasonData").and_then(Value::as_str) else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(reason_data)
        .ok()
        .and_then(|v| v.get("triggeringAlarms").cloned())
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.get("arn").and_then(Value::as_str).map(clean_arn))
        .collect()
}

/// Removes stray spaces from an ARN's fixed part (`us-east-1: 4444…`, as in some published
/// samples); the alarm name after `:alarm:` may contain spaces and is kept.
fn clean_arn(arn: &str) -> String {
    match arn.split_once(":alarm:") {
        Some((prefix, name)) => format!("{}:alarm:{name}", prefix.replace(' ', "")),
        None => arn.to_string(),
    }
}

/// An SNS notification; empty for non-notifications (subscription confirmations).
fn sns_notification(sns: &Value, what: &str) -> Result<Vec<Event>, EventError> {
    let kind = text(sns.get("Type")).unwrap_or_else(|| "Notification".into());
    if kind != "Notification" {
        return Ok(vec![Event::Ignore(format!(
            "SNS {kind} (confirm the subscription with the SubscribeURL it carries)"
        ))]);
    }
    let message = sns
        .get("Message")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(&format!("{what}.Message"), "missing"))?;
    let Ok(inner) = serde_json::from_str::<Value>(message) else {
        return Ok(vec![Event::Ignore(format!(
            "{what}: the SNS message is not a CloudWatch alarm (not JSON)"
        ))]);
    };
    if inner.get("AlarmName").is_none() {
        // EventBridge → SNS carries the event itself.
        return parse_value(&inner, 1);
    }
    Ok(vec![classic(&inner, text(sns.get("MessageId")))?])
}

/// The alarm message CloudWatch sends to SNS (`AlarmName`, `NewStateValue`, `Trigger`).
fn classic(m: &Value, event_id: Option<String>) -> Result<Event, EventError> {
    let name = text(m.get("AlarmName")).ok_or_else(|| malformed("AlarmName", "missing"))?;
    let value =
        text(m.get("NewStateValue")).ok_or_else(|| malformed("NewStateValue", "missing"))?;
    let previous = text(m.get("OldStateValue"));
    if let Some(why) = not_a_transition(&name, &value, previous.as_deref()) {
        return Ok(Event::Ignore(why));
    }
    let time = time_of(m.get("StateChangeTime"), "StateChangeTime")?;
    let mut dimensions = Vec::new();
    let mut add = |dims: Option<&Value>| {
        for d in dims.and_then(Value::as_array).into_iter().flatten() {
            if let (Some(k), Some(v)) = (text(d.get("name")), text(d.get("value"))) {
                dimensions.push((k, v));
            }
        }
    };
    add(m.pointer("/Trigger/Dimensions"));
    for metric in m
        .pointer("/Trigger/Metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(metric.pointer("/MetricStat/Metric/Dimensions"));
    }
    Ok(Event::Alarm(Box::new(Alarm {
        shape: "sns",
        event_id,
        name,
        arn: text(m.get("AlarmArn")),
        reason: text(m.get("NewStateReason")).unwrap_or_default(),
        time,
        previous,
        region: text(m.get("Region")),
        account: text(m.get("AWSAccountId")),
        dimensions,
        muted_by: None,
        triggered_by: Vec::new(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudwatch_times() {
        let t = parse_time("2019-10-02T17:04:40.989+0000").unwrap();
        assert_eq!(t.to_rfc3339(), "2019-10-02T17:04:40.989+00:00");
        assert_eq!(
            parse_time("2023-08-04T12: 36: 15.490+0000")
                .unwrap()
                .timestamp(),
            1691152575
        );
        assert_eq!(
            parse_time("2019-10-02T17:04:40Z").unwrap().timestamp(),
            1570035880
        );
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"nope"[..],
            b"[1]",
            b"{\"Records\": 5}",
            b"{\"Messages\": [{}]}",
            b"{\"detail-type\": \"CloudWatch Alarm State Change\"}",
            b"{\"Records\": [{\"body\": \"{\"}]}",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let nested = "{\"Records\": [{\"body\": \"{\\\"Records\\\": [{\\\"body\\\": \\\"{\\\\\\\"Records\\\\\\\": []}\\\"}]}\"}]}";
        assert!(parse(nested.as_bytes()).is_ok());
    }
}
