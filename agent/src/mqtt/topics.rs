//! The topic layout: a device's topics under `<prefix>/<device>/`, and an AWS IoT named
//! shadow's.

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    pub available: String,
    pub stats: String,
    pub events: String,
    pub config_set: String,
    pub config_state: String,
    pub config_accepted: String,
    pub config_rejected: String,
    /// `<base>/+/+/set`: every camera's commands.
    pub commands: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Topics {
        let base = format!("{prefix}/{device}");
        Topics {
            available: format!("{base}/available"),
            stats: format!("{base}/stats"),
            events: format!("{base}/events"),
            config_set: format!("{base}/config/set"),
            config_state: format!("{base}/config/state"),
            config_accepted: format!("{base}/config/accepted"),
            config_rejected: format!("{base}/config/rejected"),
            commands: format!("{base}/+/+/set"),
            base,
        }
    }

    /// `<base>/<camera>/<leaf>`.
    pub fn camera(&self, camera: &str, leaf: &str) -> String {
        format!("{}/{camera}/{leaf}", self.base)
    }

    /// (camera, feature) of a command topic.
    pub fn command<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/set")?;
        let (camera, feature) = rest.split_once('/')?;
        (!camera.is_empty() && !feature.contains('/')).then_some((camera, feature))
    }
}

/// An AWS IoT named shadow's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowTopics {
    pub get: String,
    pub get_accepted: String,
    pub get_rejected: String,
    pub update: String,
    pub update_delta: String,
    pub update_rejected: String,
}

impl ShadowTopics {
    pub fn new(thing: &str, name: &str) -> ShadowTopics {
        let base = format!("$aws/things/{thing}/shadow/name/{name}");
        ShadowTopics {
            get: format!("{base}/get"),
            get_accepted: format!("{base}/get/accepted"),
            get_rejected: format!("{base}/get/rejected"),
            update: format!("{base}/update"),
            update_delta: format!("{base}/update/delta"),
            update_rejected: format!("{base}/update/rejected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_prefix_and_device() {
        let t = Topics::new("kvs-edge", "garage-pi");
        assert_eq!(t.available, "kvs-edge/garage-pi/available");
        assert_eq!(t.config_set, "kvs-edge/garage-pi/config/set");
        assert_eq!(t.commands, "kvs-edge/garage-pi/+/+/set");
        assert_eq!(
            t.camera("front", "bitrate/state"),
            "kvs-edge/garage-pi/front/bitrate/state"
        );
        assert_eq!(
            t.command("kvs-edge/garage-pi/front/bitrate/set"),
            Some(("front", "bitrate"))
        );
        for not_a_command in [
            "kvs-edge/garage-pi/config/set",
            "kvs-edge/garage-pi/front/bitrate/state",
            "kvs-edge/other/front/bitrate/set",
            "kvs-edge/garage-pi//bitrate/set",
        ] {
            assert_eq!(t.command(not_a_command), None, "{not_a_command}");
        }
        let s = ShadowTopics::new("pi-7", "kvs-edge");
        assert_eq!(
            s.update_delta,
            "$aws/things/pi-7/shadow/name/kvs-edge/update/delta"
        );
    }
}
