//! MediaConvert jobs from a template, the pure part: a job JSON taken as it is, with only
//! the fields that name this clip filled in: every input's `FileInput` (the clip), every
//! output group's `Destination` (under the clip's output prefix, one folder per group),
//! `Role`, `Queue` and `UserMetadata` (what links the job back to the clip). Everything else
//! in the template is sent exactly as written.
//!
//! A template is either a CreateJob request (`{"Role", "Settings": {…}, …}`, like the
//! event-driven source document's) or bare job settings (`{"OutputGroups", "Inputs", …}`,
//! like the batch source document's job.json). The default template is the latter's HLS
//! ladder (360/540/720), MP4 and frame-capture thumbnails.

use serde_json::{Map, Value, json};
use thiserror::Error;

/// The default template: the batch-transcoding source document's job.json.
pub const DEFAULT_TEMPLATE: &str = include_str!("../templates/hls-ladder-mp4-thumbnails.json");

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("job template {source_name}: {path}: {reason}")]
pub struct TemplateError {
    pub source_name: String,
    pub path: String,
    pub reason: String,
}

/// What a job is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFor {
    /// `s3://bucket/key` of the clip.
    pub input: String,
    /// `s3://bucket/prefix/` under which each output group gets its folder.
    pub destination: String,
    pub role: String,
    pub queue: Option<String>,
    pub user_metadata: Vec<(String, String)>,
}

/// A validated template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    request: Map<String, Value>,
}

fn err(source_name: &str, path: impl Into<String>, reason: impl Into<String>) -> TemplateError {
    TemplateError {
        source_name: source_name.into(),
        path: path.into(),
        reason: reason.into(),
    }
}

impl Template {
    pub fn parse(source_name: &str, text: &str) -> Result<Template, TemplateError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| err(source_name, "", format!("not JSON: {e}")))?;
        let Value::Object(o) = v else {
            return Err(err(source_name, "", "must be a JSON object"));
        };
        let request = if o.contains_key("Settings") {
            o
        } else {
            let mut r = Map::new();
            r.insert("Settings".into(), Value::Object(o));
            r
        };
        let settings = &request["Settings"];
        let inputs = settings["Inputs"].as_array().filter(|i| !i.is_empty());
        if inputs.is_none() {
            return Err(err(
                source_name,
                "Settings.Inputs",
                "needs at least one input",
            ));
        }
        let groups = settings["OutputGroups"]
            .as_array()
            .filter(|g| !g.is_empty())
            .ok_or_else(|| {
                err(
                    source_name,
                    "Settings.OutputGroups",
                    "needs at least one output group",
                )
            })?;
        for (i, g) in groups.iter().enumerate() {
            group_settings_key(g).ok_or_else(|| {
                err(
                    source_name,
                    format!("Settings.OutputGroups[{i}].OutputGroupSettings"),
                    "no Type with its *GroupSettings",
                )
            })?;
        }
        Ok(Template { request })
    }

    pub fn default_template() -> Template {
        Template::parse("built-in", DEFAULT_TEMPLATE).expect("the built-in template is valid")
    }

    /// The CreateJob request body for one clip.
    pub fn job(&self, job: &JobFor) -> Value {
        let mut request = self.request.clone();
        request.insert("Role".into(), json!(job.role));
        if let Some(q) = &job.queue {
            request.insert("Queue".into(), json!(q));
        }
        let metadata: Map<String, Value> = job
            .user_metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        request.insert("UserMetadata".into(), Value::Object(metadata));
        let settings = request
            .get_mut("Settings")
            .and_then(Value::as_object_mut)
            .expect("checked when parsed");
        if let Some(inputs) = settings.get_mut("Inputs").and_then(Value::as_array_mut) {
            for input in inputs {
                input["FileInput"] = json!(job.input);
            }
        }
        let base = if job.destination.ends_with('/') {
            job.destination.clone()
        } else {
            format!("{}/", job.destination)
        };
        if let Some(groups) = settings
            .get_mut("OutputGroups")
            .and_then(Value::as_array_mut)
        {
            for g in groups {
                let folder = folder(g);
                if let Some(key) = group_settings_key(g) {
                    g["OutputGroupSettings"][key]["Destination"] =
                        json!(format!("{base}{folder}/"));
                }
            }
        }
        Value::Object(request)
    }
}

/// Members whose keys are names chosen by the user (maps), not member names.
const MAP_MEMBERS: [&str; 6] = [
    "AudioSelectors",
    "AudioSelectorGroups",
    "CaptionSelectors",
    "UserMetadata",
    "Tags",
    "DynamicAudioSelectors",
];

/// A job in the SDKs' and console's member names (`OutputGroups`, as templates are written)
/// → the REST API's wire names (`outputGroups`): every member name gets a lowercase first
/// letter, the keys of map members (`"Audio Selector 1"`, user metadata) stay as they are.
pub fn to_wire(v: &Value) -> Value {
    fn lower(k: &str) -> String {
        let mut c = k.chars();
        c.next()
            .map(|f| f.to_lowercase().chain(c).collect())
            .unwrap_or_default()
    }
    fn walk(v: &Value, map_member: bool) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| {
                        let is_map = MAP_MEMBERS.contains(&k.as_str())
                            || MAP_MEMBERS.iter().any(|m| lower(m) == *k);
                        let key = if map_member { k.clone() } else { lower(k) };
                        // A map's values are structures again (except user metadata's strings).
                        (key, walk(v, is_map && !map_member))
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, false)).collect()),
            other => other.clone(),
        }
    }
    walk(v, false)
}

/// `HlsGroupSettings` for `"Type": "HLS_GROUP_SETTINGS"`, and so on.
fn group_settings_key(group: &Value) -> Option<&'static str> {
    let kind = group["OutputGroupSettings"]["Type"].as_str()?;
    let key = match kind {
        "HLS_GROUP_SETTINGS" => "HlsGroupSettings",
        "FILE_GROUP_SETTINGS" => "FileGroupSettings",
        "DASH_ISO_GROUP_SETTINGS" => "DashIsoGroupSettings",
        "CMAF_GROUP_SETTINGS" => "CmafGroupSettings",
        "MS_SMOOTH_GROUP_SETTINGS" => "MsSmoothGroupSettings",
        _ => return None,
    };
    group["OutputGroupSettings"]
        .get(key)
        .is_some()
        .then_some(key)
}

/// The output folder of a group: `hls`, `mp4`, `thumbnails` (a file group of frame
/// captures), `dash`, `cmaf`, `smooth`, or the group's name.
pub fn folder(group: &Value) -> String {
    let outputs = group["Outputs"].as_array().cloned().unwrap_or_default();
    let containers: Vec<&str> = outputs
        .iter()
        .filter_map(|o| o["ContainerSettings"]["Container"].as_str())
        .collect();
    let frame_capture = outputs
        .iter()
        .any(|o| o["VideoDescription"]["CodecSettings"]["Codec"].as_str() == Some("FRAME_CAPTURE"));
    match group_settings_key(group) {
        Some("HlsGroupSettings") => "hls".into(),
        Some("DashIsoGroupSettings") => "dash".into(),
        Some("CmafGroupSettings") => "cmaf".into(),
        Some("MsSmoothGroupSettings") => "smooth".into(),
        Some("FileGroupSettings") if frame_capture => "thumbnails".into(),
        Some("FileGroupSettings") if containers.contains(&"MP4") => "mp4".into(),
        _ => {
            let name = group["CustomName"]
                .as_str()
                .or(group["Name"].as_str())
                .unwrap_or("output");
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT_DRIVEN: &str = include_str!("../templates/event-driven-hls-mp4.json");

    fn job_for() -> JobFor {
        JobFor {
            input: "s3://clips/clips/cam/2026/11/22/door-1.mp4".into(),
            destination: "s3://media/transcoded/clips/cam/2026/11/22/door-1".into(),
            role: "arn:aws:iam::123456789012:role/MediaConvert".into(),
            queue: Some("arn:aws:mediaconvert:us-east-1:123456789012:queues/Default".into()),
            user_metadata: vec![(
                "clip".into(),
                "s3://clips/clips/cam/2026/11/22/door-1.mp4".into(),
            )],
        }
    }

    /// Every path at which two JSON values differ.
    fn differences(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    differences(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        format!("{path}.{k}"),
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    differences(p, q, format!("{path}[{i}]"), out);
                }
            }
            _ if a != b => out.push(path),
            _ => {}
        }
    }

    #[test]
    fn the_job_is_the_template_but_for_the_filled_in_fields() {
        for (name, text) in [
            ("job.json", DEFAULT_TEMPLATE),
            ("event-driven", EVENT_DRIVEN),
        ] {
            let template = Template::parse(name, text).unwrap();
            let original = template.request.clone();
            let job = template.job(&job_for());
            let mut diff = Vec::new();
            differences(&Value::Object(original), &job, String::new(), &mut diff);
            for path in &diff {
                let allowed = path == ".Role"
                    || path == ".Queue"
                    || path == ".UserMetadata"
                    || (path.starts_with(".Settings.Inputs[") && path.ends_with("].FileInput"))
                    || (path.starts_with(".Settings.OutputGroups[")
                        && path.ends_with(".Destination"));
                assert!(allowed, "{name}: {path} changed");
            }
            assert!(
                diff.iter().any(|p| p.ends_with("FileInput")),
                "{name}: {diff:?}"
            );
            assert_eq!(job["Settings"]["Inputs"][0]["FileInput"], job_for().input);
        }
    }

    #[test]
    fn each_output_group_gets_its_folder() {
        let job = Template::default_template().job(&job_for());
        let destinations: Vec<&str> = job["Settings"]["OutputGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let key = group_settings_key(g).unwrap();
                g["OutputGroupSettings"][key]["Destination"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        let base = "s3://media/transcoded/clips/cam/2026/11/22/door-1/";
        assert_eq!(
            destinations,
            [
                format!("{base}hls/"),
                format!("{base}mp4/"),
                format!("{base}thumbnails/")
            ]
        );
        assert_eq!(job["Role"], job_for().role);
        assert_eq!(job["UserMetadata"]["clip"], job_for().input);
    }

    #[test]
    fn jobs_go_out_in_wire_names() {
        let job = json!({"Role": "r", "UserMetadata": {"clip_key": "a/B.mp4"},
            "Settings": {"Inputs": [{"FileInput": "s3://b/k",
                "AudioSelectors": {"Audio Selector 1": {"DefaultSelection": "DEFAULT"}}}]}});
        assert_eq!(
            to_wire(&job),
            json!({"role": "r", "userMetadata": {"clip_key": "a/B.mp4"},
                "settings": {"inputs": [{"fileInput": "s3://b/k",
                    "audioSelectors": {"Audio Selector 1": {"defaultSelection": "DEFAULT"}}}]}})
        );
        assert_eq!(
            to_wire(&to_wire(&job)),
            to_wire(&job),
            "already wire names stay"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (text, path) in [
            ("[]", ""),
            ("{\"OutputGroups\": []}", "Settings.Inputs"),
            (
                "{\"Inputs\": [{}], \"OutputGroups\": []}",
                "Settings.OutputGroups",
            ),
            (
                "{\"Inputs\": [{}], \"OutputGroups\": [{\"OutputGroupSettings\": {\"Type\": \"HLS_GROUP_SETTINGS\"}}]}",
                "Settings.OutputGroups[0].OutputGroupSettings",
            ),
        ] {
            assert_eq!(
                Template::parse("t.json", text).unwrap_err().path,
                path,
                "{text}"
            );
        }
    }
}
