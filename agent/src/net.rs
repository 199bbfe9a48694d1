//! Our own HTTP/1.1 connections (PutMedia, the IoT credential provider): one fresh TCP
//! connection per request, TLS when the URL says https, bounded by a connect timeout.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `http://` and `https://` URLs; `None` for anything else.
    pub fn parse(url: &str) -> Option<Target> {
        let uri: http::Uri = url.parse().ok()?;
        let tls = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri
            .host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Some(Target {
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
        })
    }

    /// `host[:port]` as the Host header has it (default ports left out).
    pub fn authority(&self) -> String {
        match (self.tls, self.port) {
            (false, 80) | (true, 443) => self.host.clone(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Connects (TCP, then TLS when `target.tls`) and performs the HTTP/1.1 handshake; the
/// connection task runs in the background until the request and response are done.
pub async fn connect<B>(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::time::timeout(
        timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| format!("no connection within {timeout:?}"))?
    .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    if !target.tls {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        return Ok(sender);
    }
    let config = match tls {
        Some(c) => c,
        None => crate::tls::client_config(None, None).map_err(|e| e.to_string())?,
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| format!("server name {}: {e}", target.host))?;
    let stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| format!("no TLS handshake within {timeout:?}"))?
    .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("https://s-1234.kinesisvideo.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(
            (t.tls, t.port, t.authority().as_str()),
            (true, 443, "s-1234.kinesisvideo.eu-west-1.amazonaws.com")
        );
        let t = Target::parse("http://127.0.0.1:4567").unwrap();
        assert_eq!(
            (t.tls, t.port, t.authority().as_str(), t.scheme()),
            (false, 4567, "127.0.0.1:4567", "http")
        );
        assert_eq!(Target::parse("ftp://x"), None);
        assert_eq!(Target::parse("127.0.0.1:4567"), None);
    }
}
