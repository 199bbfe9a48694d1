//! Alarm tags as a stream source: CloudWatch `ListTagsForResource` on the alarm's ARN (the
//! query API, SigV4 for `monitoring`). A tag `kvs-edge:streams` (comma-separated stream
//! names) or `StreamName` names the streams of an alarm that no mapping names, so a camera's
//! alarms can carry their stream with them.

use anyhow::{Context, bail};

use crate::signed::SignedClient;

/// Tag keys read, in order of preference.
pub const STREAM_TAGS: [&str; 2] = ["kvs-edge:streams", "StreamName"];

pub struct CloudWatch {
    url: String,
    client: SignedClient,
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of every `<name>…</name>` in `xml`, unescaped.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest: &'a str = xml;
    while let Some(a) = rest.find(&open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(&close) else { break };
        out.push(
            after[..b]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[b + close.len()..];
    }
    out
}

/// The streams the tags name: `kvs-edge:streams` (comma-separated) or `StreamName`.
pub fn streams_from_tags(tags: &[(String, String)]) -> Vec<String> {
    STREAM_TAGS
        .iter()
        .find_map(|key| tags.iter().find(|(k, _)| k == key))
        .map(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl CloudWatch {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        endpoint_url: Option<&str>,
    ) -> anyhow::Result<CloudWatch> {
        let client = SignedClient::new(sdk)?;
        let url = endpoint_url
            .map(|u| format!("{}/", u.trim_end_matches('/')))
            .unwrap_or_else(|| format!("https://monitoring.{}.amazonaws.com/", client.region()));
        Ok(CloudWatch { url, client })
    }

    /// The alarm's tags.
    pub async fn alarm_tags(&self, arn: &str) -> anyhow::Result<Vec<(String, String)>> {
        let body = format!(
            "Action=ListTagsForResource&Version=2010-08-01&ResourceARN={}",
            form_encode(arn)
        );
        let reply = self
            .client
            .send(
                "monitoring",
                "POST",
                &self.url,
                "application/x-www-form-urlencoded",
                body.as_bytes(),
            )
            .await
            .with_context(|| format!("ListTagsForResource {arn}"))?;
        let text = String::from_utf8_lossy(&reply.body);
        if !(200..300).contains(&reply.status) {
            let message = elements(&text, "Message").pop().unwrap_or_default();
            bail!("ListTagsForResource {arn}: HTTP {} {message}", reply.status);
        }
        Ok(elements(&text, "member")
            .iter()
            .filter_map(|m| {
                let key = elements(m, "Key").pop()?;
                let value = elements(m, "Value").pop().unwrap_or_default();
                Some((key, value))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_the_query_api_answer() {
        let xml = r#"<ListTagsForResourceResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/">
  <ListTagsForResourceResult><Tags>
    <member><Key>team</Key><Value>ops &amp; security</Value></member>
    <member><Key>kvs-edge:streams</Key><Value>front-cam, back-cam</Value></member>
  </Tags></ListTagsForResourceResult></ListTagsForResourceResponse>"#;
        let tags: Vec<(String, String)> = elements(xml, "member")
            .iter()
            .map(|m| {
                (
                    elements(m, "Key").pop().unwrap(),
                    elements(m, "Value").pop().unwrap(),
                )
            })
            .collect();
        assert_eq!(tags[0], ("team".into(), "ops & security".into()));
        assert_eq!(streams_from_tags(&tags), ["front-cam", "back-cam"]);
        assert_eq!(
            streams_from_tags(&[("StreamName".into(), "porch".into())]),
            ["porch"]
        );
        assert!(streams_from_tags(&[("team".into(), "x".into())]).is_empty());
    }
}
