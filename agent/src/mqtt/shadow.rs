//! AWS IoT Device Shadow mode: the desired configuration from a named shadow's delta and
//! get documents, applied like a `config/set`, and the effective configuration reported
//! back (only what changed, nulls for what went away).

use serde_json::{Value, json};
use tracing::{debug, info, warn};

use kvs_edge_config::remote;

use super::Agent;

impl Agent {
    /// `update/delta`: the desired fields that differ from what was reported.
    pub(super) async fn shadow_delta(&mut self, payload: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Value>(payload) else {
            warn!("shadow delta is not JSON: ignored");
            return;
        };
        let version = doc["version"].as_u64().unwrap_or(0);
        if version != 0 && version <= self.shadow_version {
            debug!(version, "stale shadow delta ignored");
            return;
        }
        self.shadow_version = self.shadow_version.max(version);
        self.apply_shadow(&doc["state"], version, false).await;
    }

    /// `get/accepted`: the whole shadow; apply its desired state, learn what is reported.
    pub(super) async fn shadow_document(&mut self, payload: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Value>(payload) else {
            warn!("shadow document is not JSON: ignored");
            return;
        };
        let version = doc["version"].as_u64().unwrap_or(0);
        self.shadow_version = self.shadow_version.max(version);
        self.shadow_reported = doc["state"]["reported"].clone();
        let desired = doc["state"]["desired"].clone();
        self.apply_shadow(&desired, version, true).await;
    }

    async fn apply_shadow(&mut self, desired: &Value, version: u64, always_report: bool) {
        if desired.is_null() {
            if always_report {
                self.report_to_shadow(None);
            }
            return;
        }
        // Desired states copied from config/set documents may carry these; they mean nothing here.
        let mut desired = desired.clone();
        if let Some(o) = desired.as_object_mut() {
            o.remove("version");
            o.remove("token");
            o.remove("rejected");
        }
        let next = match remote::apply_patch(&self.ctx.config, &desired) {
            Ok(n) => n,
            Err(e) => {
                info!(
                    version,
                    "shadow desired state rejected: {}: {}", e.path, e.message
                );
                let rejection = json!({"version": version, "path": e.path, "reason": e.message});
                self.publish(
                    &self.topics.config_rejected,
                    false,
                    json!({"token": format!("shadow:{version}"), "version": version, "path": e.path, "reason": e.message})
                        .to_string(),
                );
                self.report_to_shadow(Some(rejection));
                return;
            }
        };
        if next == self.ctx.config {
            // Nothing to do. Reporting again would only echo (and a redacted secret would
            // differ from the desired one forever): report only when asked to.
            if always_report {
                self.report_to_shadow(None);
            }
            return;
        }
        match self.commit(next, self.ctx.version, "shadow").await {
            Ok(_) => self.report_to_shadow(None),
            Err(reason) => {
                self.report_to_shadow(Some(json!({"version": version, "reason": reason})))
            }
        }
    }

    /// Reports the effective configuration (only what changed, nulls for what went away),
    /// and the last rejection (or null).
    pub(super) fn report_to_shadow(&mut self, rejected: Option<Value>) {
        let Some(s) = self.shadow.clone() else {
            return;
        };
        let mut reported = remote::redacted(&self.ctx.config);
        reported["rejected"] = rejected.unwrap_or(Value::Null);
        remote::strip_nulls(&mut reported);
        let patch = remote::diff(&self.shadow_reported, &reported);
        if patch.as_object().is_some_and(|o| o.is_empty()) {
            return;
        }
        self.publish(
            &s.update,
            false,
            json!({ "state": { "reported": patch } }).to_string(),
        );
        self.shadow_reported = reported;
    }
}
