//! What a replay runs over, the pure part: which listed objects are clips to replay (the
//! filters: stream, time range, key pattern, read from the key through the key template),
//! the S3 Inventory manifest (`manifest.json`: CSV files and their columns) and the rows of
//! inventory files and `bucket,key[,version]` lists. The listing itself is in `replay`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use kvs_edge_config::archiver::glob_match;
use serde_json::Value;

use crate::batch::{Task, decode_key};

/// A key template's fields, as `clip_key` fills them in.
const FIELDS: [&str; 7] = ["stream", "alarm", "yyyy", "mm", "dd", "start", "end"];

/// The parts of a key template: literal text and `{field}`s.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

fn parts(template: &str) -> Vec<Part> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) if FIELDS.contains(&&rest[open + 1..open + close]) => {
                if open > 0 {
                    out.push(Part::Text(rest[..open].to_string()));
                }
                out.push(Part::Field(rest[open + 1..open + close].to_string()));
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push(Part::Text(rest[..=open].to_string()));
                rest = &rest[open + 1..];
            }
        }
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest.to_string()));
    }
    out
}

/// Whether `value` can be what `clip_key` put in for `field`.
fn fits(field: &str, value: &str) -> bool {
    let digits = |n: usize| value.len() == n && value.bytes().all(|b| b.is_ascii_digit());
    match field {
        "yyyy" => digits(4),
        "mm" | "dd" => digits(2),
        "start" | "end" => compact_time(value).is_some(),
        "alarm" => {
            !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
        _ => !value.is_empty() && !value.contains('/'),
    }
}

/// `20240217T115308Z` → the time.
fn compact_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| Utc.from_utc_datetime(&t))
}

fn matches(parts: &[Part], key: &str, out: &mut Vec<(String, String)>) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return key.is_empty();
    };
    match first {
        Part::Text(t) => key
            .strip_prefix(t.as_str())
            .is_some_and(|k| matches(rest, k, out)),
        Part::Field(f) => {
            // Every split point, shortest first; fields are short and keys too.
            for (i, _) in key.char_indices().skip(1).chain([(key.len(), ' ')]) {
                let value = &key[..i];
                if fits(f, value) {
                    out.push((f.clone(), value.to_string()));
                    if matches(rest, &key[i..], out) {
                        return true;
                    }
                    out.pop();
                }
            }
            false
        }
    }
}

/// The fields of `key` when it is a key `template` makes; None when it is not.
pub fn key_fields(template: &str, key: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    matches(&parts(template), key, &mut out).then_some(out)
}

/// The filters of a replay. Only `.mp4` clips are ever tasks (not job records, failure
/// records or transcoded outputs).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub key_template: String,
    /// Streams to keep (all when empty).
    pub streams: Vec<String>,
    /// The clip's window start (from the key; the object's LastModified when the key does
    /// not say) must be in `[since, until)`.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// A glob (`*`) over the whole key.
    pub pattern: Option<String>,
    /// Keys under this prefix are outputs, not clips (the transcode output prefix).
    pub outputs: Option<String>,
}

impl Filter {
    /// Filters that can never match anything are refused up front.
    pub fn check(&self) -> Result<(), String> {
        let fields: Vec<Part> = parts(&self.key_template);
        if !self.streams.is_empty() && !fields.contains(&Part::Field("stream".into())) {
            return Err(format!(
                "--stream needs {{stream}} in the key template ({})",
                self.key_template
            ));
        }
        if let (Some(a), Some(b)) = (self.since, self.until)
            && a >= b
        {
            return Err("--since must be before --until".into());
        }
        Ok(())
    }

    /// Where to list: the template's literal start, narrowed to each stream when the
    /// template starts with a literal and `{stream}`.
    pub fn prefixes(&self) -> Vec<String> {
        let p = parts(&self.key_template);
        let literal = match p.first() {
            Some(Part::Text(t)) => t.clone(),
            _ => String::new(),
        };
        if !self.streams.is_empty() && p.get(1) == Some(&Part::Field("stream".into())) {
            // With what follows the stream (`clips/cam1/`), cam1's prefix does not hold
            // cam10's clips.
            let after = match p.get(2) {
                Some(Part::Text(t)) => t.as_str(),
                _ => "",
            };
            let mut prefixes: Vec<String> = self
                .streams
                .iter()
                .map(|s| format!("{literal}{s}{after}"))
                .collect();
            prefixes.sort();
            prefixes.dedup();
            // Where one prefix still lies inside another (no text after the stream), the
            // outer listing covers both: list it once.
            let mut out: Vec<String> = Vec::new();
            for prefix in prefixes {
                if !out.iter().any(|o| prefix.starts_with(o.as_str())) {
                    out.push(prefix);
                }
            }
            return out;
        }
        vec![literal]
    }

    /// Whether an object is a clip to replay.
    pub fn accepts(&self, key: &str, modified: Option<DateTime<Utc>>) -> bool {
        if !key.ends_with(".mp4") {
            return false;
        }
        if let Some(out) = &self.outputs
            && !out.is_empty()
            && key.starts_with(out.as_str())
        {
            return false;
        }
        if let Some(p) = &self.pattern
            && !glob_match(p, key)
        {
            return false;
        }
        let fields = key_fields(&self.key_template, key);
        let field = |name: &str| {
            fields
                .as_ref()
                .and_then(|f| f.iter().find(|(n, _)| n == name))
                .map(|(_, v)| v.as_str())
        };
        if !self.streams.is_empty()
            && !field("stream").is_some_and(|s| self.streams.iter().any(|x| x == s))
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let start = field("start").and_then(compact_time).or_else(|| {
            let (y, m, d) = (field("yyyy")?, field("mm")?, field("dd")?);
            NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
                .map(|d| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()))
        });
        let Some(t) = start.or(modified) else {
            return false;
        };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// An S3 Inventory report's manifest: where its CSV files are and what their columns are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The bucket holding the files (the manifest's destination bucket).
    pub files_bucket: String,
    /// Each file's key and MD5 (hex), as the manifest lists them.
    pub files: Vec<(String, Option<String>)>,
    pub columns: Columns,
}

/// Column positions in an inventory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    bucket: usize,
    key: usize,
    version: Option<usize>,
    is_latest: Option<usize>,
    is_delete_marker: Option<usize>,
    modified: Option<usize>,
}

impl Inventory {
    /// Reads `manifest.json`; every problem names the field.
    pub fn parse(v: &Value) -> Result<Inventory, String> {
        let format = v["fileFormat"].as_str().ok_or("fileFormat: missing")?;
        if format != "CSV" {
            return Err(format!(
                "fileFormat: {format} inventories are not read; configure the inventory as CSV"
            ));
        }
        let schema: Vec<&str> = v["fileSchema"]
            .as_str()
            .ok_or("fileSchema: missing")?
            .split(',')
            .map(str::trim)
            .collect();
        let at = |name: &str| schema.iter().position(|c| *c == name);
        let columns = Columns {
            bucket: at("Bucket").ok_or("fileSchema: no Bucket column")?,
            key: at("Key").ok_or("fileSchema: no Key column")?,
            version: at("VersionId"),
            is_latest: at("IsLatest"),
            is_delete_marker: at("IsDeleteMarker"),
            modified: at("LastModifiedDate"),
        };
        let destination = v["destinationBucket"]
            .as_str()
            .ok_or("destinationBucket: missing")?;
        let files_bucket = destination
            .strip_prefix("arn:aws:s3:::")
            .unwrap_or(destination)
            .to_string();
        let files = v["files"]
            .as_array()
            .ok_or("files: must be an array")?
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let key = f["key"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("files[{i}].key: missing"))?;
                let md5 = f["MD5checksum"]
                    .as_str()
                    .filter(|m| m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_ascii_lowercase);
                Ok::<_, String>((key, md5))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Inventory {
            files_bucket,
            files,
            columns,
        })
    }
}

impl Columns {
    /// One inventory row: the object (None for delete markers and older versions) and its
    /// LastModifiedDate.
    #[allow(clippy::type_complexity)]
    pub fn task(&self, row: &[&str]) -> Result<Option<(Task, Option<DateTime<Utc>>)>, String> {
        let get = |i: usize| {
            row.get(i)
                .copied()
                .ok_or_else(|| format!("{} columns, the schema has more", row.len()))
        };
        let flag = |i: Option<usize>| i.and_then(|i| row.get(i)).map(|v| *v == "true");
        if flag(self.is_delete_marker) == Some(true) || flag(self.is_latest) == Some(false) {
            return Ok(None);
        }
        let version = match self.version {
            Some(i) => Some(get(i)?).filter(|v| !v.is_empty()).map(str::to_string),
            None => None,
        };
        let modified = self
            .modified
            .and_then(|i| row.get(i))
            .and_then(|t| crate::event::parse_time(t));
        Ok(Some((
            Task {
                task_id: String::new(),
                bucket: get(self.bucket)?.to_string(),
                key: decode_key(get(self.key)?)?,
                version_id: version,
            },
            modified,
        )))
    }
}

/// One row of a `bucket,key[,version]` list (S3 Batch Operations' CSV manifest format; a
/// completion report is one too).
pub fn list_row(row: &[&str]) -> Result<Task, String> {
    let (bucket, key) = match row {
        [b, k, ..] if !b.is_empty() && !k.is_empty() => (b, k),
        _ => return Err("expected bucket,key[,version]".into()),
    };
    Ok(Task {
        task_id: String::new(),
        bucket: bucket.to_string(),
        key: decode_key(key)?,
        version_id: row.get(2).filter(|v| !v.is_empty()).map(|v| v.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::clip_key;
    use chrono::Duration;

    const TEMPLATE: &str = "clips/{stream}/{yyyy}/{mm}/{dd}/{alarm}-{start}-{end}.mp4";

    fn t(s: &str) -> DateTime<Utc> {
        crate::event::parse_time(s).unwrap()
    }

    #[test]
    fn keys_made_by_the_template_read_back_into_their_fields() {
        let start = t("2024-02-17T11:52:08Z");
        let key = clip_key(
            TEMPLATE,
            "garage-cam",
            "Garage motion-2024 / night",
            start,
            start + Duration::seconds(180),
        );
        let fields = key_fields(TEMPLATE, &key).unwrap();
        let get = |n: &str| fields.iter().find(|(f, _)| f == n).unwrap().1.clone();
        assert_eq!(get("stream"), "garage-cam");
        assert_eq!(get("alarm"), "Garage-motion-2024---night");
        assert_eq!(get("start"), "20240217T115208Z");
        assert_eq!(get("end"), "20240217T115508Z");
        assert_eq!(key_fields(TEMPLATE, "clips/x/2024/02/17/a.mp4"), None);
        assert_eq!(key_fields(TEMPLATE, "other/garage-cam/a.mp4"), None);
    }

    #[test]
    fn filters_keep_only_the_clips_asked_for() {
        let start = t("2024-02-17T11:52:08Z");
        let key = |stream: &str, at: DateTime<Utc>| {
            clip_key(TEMPLATE, stream, "motion", at, at + Duration::seconds(180))
        };
        let f = Filter {
            key_template: TEMPLATE.into(),
            streams: vec!["cam-a".into()],
            since: Some(start),
            until: Some(start + Duration::hours(1)),
            pattern: None,
            outputs: Some("transcoded/".into()),
        };
        f.check().unwrap();
        assert!(f.accepts(&key("cam-a", start), None));
        assert!(!f.accepts(&key("cam-b", start), None), "other stream");
        assert!(
            !f.accepts(&key("cam-a", start - Duration::seconds(1)), None),
            "before since"
        );
        assert!(
            !f.accepts(&key("cam-a", start + Duration::hours(1)), None),
            "until is exclusive"
        );
        let stem = key("cam-a", start);
        let stem = stem.trim_end_matches(".mp4");
        for sibling in [".job.json", ".transcode.json", ".error.json"] {
            assert!(!f.accepts(&format!("{stem}{sibling}"), None), "{sibling}");
        }
        assert!(!f.accepts(&format!("transcoded/{stem}/mp4/x.mp4"), None));
        assert_eq!(f.prefixes(), vec!["clips/cam-a/".to_string()]);
        // cam1's listing never holds cam10's clips, and a stream named twice is listed once.
        let both = Filter {
            streams: vec!["cam10".into(), "cam1".into(), "cam1".into()],
            ..f.clone()
        };
        assert_eq!(
            both.prefixes(),
            vec!["clips/cam1/".to_string(), "clips/cam10/".to_string()]
        );
        let glued = Filter {
            key_template: "clips/{stream}{yyyy}.mp4".into(),
            ..both.clone()
        };
        assert_eq!(
            glued.prefixes(),
            vec!["clips/cam1".to_string()],
            "one listing covers both"
        );

        let by_pattern = Filter {
            key_template: TEMPLATE.into(),
            pattern: Some("*/motion-*".into()),
            ..Filter::default()
        };
        assert!(by_pattern.accepts(&key("cam-b", start), None));
        assert!(!by_pattern.accepts("clips/cam-b/2024/02/17/door-x.mp4", None));
        assert_eq!(by_pattern.prefixes(), vec!["clips/".to_string()]);

        // A key the template did not make: LastModified decides the time range.
        let foreign = Filter {
            key_template: TEMPLATE.into(),
            since: Some(start),
            ..Filter::default()
        };
        assert!(foreign.accepts("imported/a.mp4", Some(start)));
        assert!(!foreign.accepts("imported/a.mp4", Some(start - Duration::days(1))));
        assert!(!foreign.accepts("imported/a.mp4", None));

        let no_stream = Filter {
            key_template: "clips/{alarm}-{start}.mp4".into(),
            streams: vec!["x".into()],
            ..Filter::default()
        };
        assert!(no_stream.check().unwrap_err().contains("{stream}"));
    }

    #[test]
    fn the_published_inventory_manifest_reads() {
        let path = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../tests/fixtures/aws-events/s3-inventory-manifest-csv.json");
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let inv = Inventory::parse(&v).unwrap();
        assert_eq!(inv.files_bucket, "example-inventory-destination-bucket");
        assert_eq!(inv.files.len(), 1);
        assert!(inv.files[0].0.ends_with(".csv.gz"));
        assert_eq!(
            inv.files[0].1.as_deref(),
            Some("f11166069f1990abeb9c97ace9cdfabc")
        );
        let row = [
            "example-source-bucket",
            "clips/cam%201/a.mp4",
            "v1",
            "true",
            "false",
            "1024",
            "2024-02-17T11:52:08.000Z",
        ];
        let (task, modified) = inv.columns.task(&row).unwrap().unwrap();
        assert_eq!(task.key, "clips/cam 1/a.mp4");
        assert_eq!(task.version_id.as_deref(), Some("v1"));
        assert_eq!(modified, Some(t("2024-02-17T11:52:08Z")));
        let mut old = row;
        old[3] = "false";
        assert_eq!(inv.columns.task(&old).unwrap(), None, "an older version");
        let mut deleted = row;
        deleted[4] = "true";
        assert_eq!(inv.columns.task(&deleted).unwrap(), None, "a delete marker");
        assert!(inv.columns.task(&row[..1]).is_err());

        for (name, field) in [
            ("s3-inventory-manifest-orc.json", "fileFormat"),
            ("s3-inventory-manifest-parquet.json", "fileFormat"),
        ] {
            let path = std::path::PathBuf::from(
                std::env::var("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../tests/fixtures/aws-events")
            .join(name);
            let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            assert!(
                Inventory::parse(&v).unwrap_err().starts_with(field),
                "{name}"
            );
        }
    }

    #[test]
    fn list_rows_are_bucket_key_and_an_optional_version() {
        let t = list_row(&["b", "k%2B1.mp4"]).unwrap();
        assert_eq!((t.bucket.as_str(), t.key.as_str()), ("b", "k+1.mp4"));
        assert_eq!(t.version_id, None);
        assert_eq!(
            list_row(&["b", "k", "v", "succeeded"])
                .unwrap()
                .version_id
                .as_deref(),
            Some("v")
        );
        assert!(list_row(&["b"]).is_err());
        assert!(list_row(&["", "k"]).is_err());
    }
}
