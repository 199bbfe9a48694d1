//! kvs-edge-config: the typed configuration shared by the agent and the archiver.
//!
//! Every error names where it came from and the field path (`cameras[0].stream_name`).
//! `agent` is the agent's `agent.toml`, `remote` the document it takes over MQTT, `archiver`
//! the archiver's `archiver.toml`.

pub mod agent;
pub mod archiver;
pub mod remote;

pub use agent::AgentConfig;

/// The stream tags saying which device (its `device_id`) and which of its cameras record a
/// stream. The agent sets them on the streams it creates (`create_stream`); the archiver
/// reads them to know whom to ask for a window KVS lacks.
pub const STREAM_DEVICE_TAG: &str = "kvs-edge:device";
pub const STREAM_CAMERA_TAG: &str = "kvs-edge:camera";
use serde::Deserialize;
use thiserror::Error;

/// A configuration problem, always naming the field path (`cameras[0].stream_name`) and
/// where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{source_name}: {path}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub path: String,
    pub message: String,
}

/// How to reach AWS (or a local stand-in): region and an optional endpoint override, as the
/// AWS SDKs' `AWS_ENDPOINT_URL` does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

impl AwsSettings {
    pub fn validate(&self, source_name: &str, path: &str) -> Result<(), ConfigError> {
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError {
                source_name: source_name.into(),
                path: format!("{path}.endpoint_url"),
                message: format!("{url:?} must start with http:// or https://"),
            });
        }
        Ok(())
    }
}

/// Parses a TOML document into `T`, turning serde's error into a `ConfigError`.
pub fn from_toml<T: for<'de> Deserialize<'de>>(
    source_name: &str,
    text: &str,
) -> Result<T, ConfigError> {
    // Through serde_path_to_error, so that a wrong value names its field at any depth
    // (`cameras[0].fragment_duration_ms`), not only its line and column.
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let field = e.path().to_string();
        let e = e.into_inner();
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = span.start - before.rfind('\n').map_or(0, |n| n + 1) + 1;
            format!("line {line}, column {column}")
        });
        let path = match (field.as_str(), at) {
            ("." | "", Some(at)) => at,
            ("." | "", None) => String::new(),
            (field, Some(at)) => format!("{field} ({at})"),
            (field, None) => field.to_string(),
        };
        ConfigError {
            source_name: source_name.into(),
            path,
            message: e.message().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_value_names_its_field_at_any_depth() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Camera {
            name: String,
            fragment_duration_ms: u64,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            cameras: Vec<Camera>,
        }
        let text = "[[cameras]]\nname = \"a\"\nfragment_duration_ms = 2000\n\
                    [[cameras]]\nname = \"b\"\nfragment_duration_ms = \"2s\"\n";
        let e = from_toml::<Doc>("agent.toml", text).unwrap_err();
        assert_eq!(
            e.path,
            "cameras[1].fragment_duration_ms (line 6, column 24)"
        );
        assert!(e.message.contains("invalid type: string \"2s\""), "{e}");
        // A syntax error has no field: its place.
        let e = from_toml::<Doc>("agent.toml", "[[cameras]\n").unwrap_err();
        assert!(e.path.starts_with("line 1"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let s: AwsSettings = from_toml("agent.toml", "endpoint_url = \"localhost:4567\"").unwrap();
        let e = s.validate("agent.toml", "aws").unwrap_err();
        assert_eq!(e.path, "aws.endpoint_url");
        assert!(e.to_string().starts_with("agent.toml: aws.endpoint_url:"));
        let e = from_toml::<AwsSettings>("agent.toml", "\nregoin = \"x\"").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        assert_eq!(e.path, "regoin (line 2, column 1)");
    }
}
