//! The `[mqtt]` section: the broker, its TLS, the AWS IoT shadow, the protocol version.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The MQTT broker the agent reports to (topics under `<prefix>/<device_id>/`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Topic prefix (like Frigate's `frigate/`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Default: `kvs-edge-<device_id>`.
    pub client_id: Option<String>,
    /// `"5"` (default) or `"3.1.1"` for brokers that speak only that. MQTT 5 is what lets
    /// the agent see a retained command sent while it is connected, keep messages too large
    /// for it at the broker, and answer on a request's response topic (docs/mqtt.md).
    #[serde(default)]
    pub protocol: MqttProtocol,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Publish per-camera stats this often.
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// TLS to the broker (server verification always on); plain TCP when absent.
    pub tls: Option<MqttTls>,
    /// Also take the configuration from an AWS IoT named shadow.
    pub shadow: Option<ShadowConfig>,
}

/// TLS to the broker: a CA file (system roots when absent), a client certificate for mutual
/// TLS (AWS IoT Core's device certificate), and ALPN protocols (AWS IoT on port 443 needs
/// `x-amzn-mqtt-ca`, which is the default there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    pub ca_path: Option<PathBuf>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// AWS IoT Device Shadow mode: desired configuration from
/// `$aws/things/<thing_name>/shadow/name/<name>/…`, reported back after it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    pub thing_name: String,
    #[serde(default = "default_shadow_name")]
    pub name: String,
}

fn default_shadow_name() -> String {
    "kvs-edge".into()
}

impl MqttTls {
    /// The ALPN protocols to offer: the configured ones, or AWS IoT's on port 443.
    pub fn alpn_for(&self, port: u16) -> Vec<String> {
        if self.alpn.is_empty() && port == 443 {
            vec!["x-amzn-mqtt-ca".into()]
        } else {
            self.alpn.clone()
        }
    }
}

/// The MQTT protocol version the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

pub(crate) fn default_mqtt_port() -> u16 {
    1883
}
pub(crate) fn default_prefix() -> String {
    "kvs-edge".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_stats_interval() -> u64 {
    30
}
