//! SigV4 verification (server side), pure: rebuild the canonical request from what arrived,
//! derive the signing key from the configured secret and compare signatures.
//!
//! Written from the SigV4 specification, independently of the `aws-sigv4` signer our
//! clients use, so a signing bug in a client cannot be mirrored here. The payload hash is the
//! `x-amz-content-sha256` header when present (checked against the body when the body is
//! known), else the SHA-256 of the body; for PutMedia, whose body streams, it is the
//! SHA-256 of the empty string, as the production C producer signs it.

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// How far `x-amz-date` may be from the server clock, as in AWS.
pub const MAX_SKEW_SECS: i64 = 15 * 60;
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("Missing Authentication Token")]
    Missing,
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    #[error("The security token included in the request is invalid (unknown access key {0})")]
    UnknownKey(String),
    #[error("Credential should be scoped to a valid service: expected {expected}, got {got}")]
    WrongService { expected: String, got: String },
    #[error("Signature expired: {0} is more than 15 minutes from the server time {1}")]
    Expired(String, String),
    #[error("The provided x-amz-content-sha256 header does not match what was computed")]
    PayloadHashMismatch,
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method."
    )]
    SignatureMismatch,
}

impl AuthError {
    /// The AWS error type name, for `x-amzn-ErrorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::UnknownKey(_) => "UnrecognizedClientException",
            AuthError::Malformed(_) => "IncompleteSignatureException",
            _ => "InvalidSignatureException",
        }
    }
}

/// The body as far as the verifier can know it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    Known(&'a [u8]),
    /// A streaming body (PutMedia) that is not hashed.
    Streaming,
}

/// What a verified signature tells about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub access_key: String,
    pub region: String,
    pub service: String,
}

struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let malformed = |m: &str| AuthError::Malformed(m.to_string());
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| malformed("expected the AWS4-HMAC-SHA256 algorithm"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let signed = signed.ok_or_else(|| malformed("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = parts[..] else {
        return Err(malformed(
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    Ok(Authorization {
        access_key,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The canonical URI: every path segment URI-encoded once more (the non-S3 rule), or kept
/// as sent (`double_encode == false`, the S3 rule).
fn canonical_uri(path: &str, double_encode: bool) -> String {
    if path.is_empty() {
        return "/".into();
    }
    if !double_encode {
        return path.to_string();
    }
    path.split('/')
        .map(|seg| utf8_percent_encode(seg, UNRESERVED).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                let decoded = percent_decode_str(&s.replace('+', "%20"))
                    .decode_utf8_lossy()
                    .into_owned();
                utf8_percent_encode(&decoded, UNRESERVED).to_string()
            };
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The request as the verifier sees it.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
}

/// Verifies the SigV4 `Authorization` header of `req`.
pub fn verify(
    req: &Request<'_>,
    payload: Payload<'_>,
    credentials: &[Credentials],
    expected_service: &str,
    now: DateTime<Utc>,
) -> Result<Scope, AuthError> {
    let auth = req.headers.get("authorization").ok_or(AuthError::Missing)?;
    let auth = auth
        .to_str()
        .map_err(|_| AuthError::Malformed("not ASCII".into()))?;
    let auth = parse_authorization(auth)?;
    let creds = credentials
        .iter()
        .find(|c| c.access_key == auth.access_key)
        .ok_or_else(|| AuthError::UnknownKey(auth.access_key.to_string()))?;
    if auth.service != expected_service {
        return Err(AuthError::WrongService {
            expected: expected_service.into(),
            got: auth.service.into(),
        });
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| AuthError::Malformed("no x-amz-date header".into()))?;
    let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            AuthError::Malformed(format!("x-amz-date {amz_date:?} is not YYYYMMDDTHHMMSSZ"))
        })?
        .and_utc();
    if (now - signed_at).num_seconds().abs() > MAX_SKEW_SECS {
        return Err(AuthError::Expired(
            amz_date.into(),
            now.format("%Y%m%dT%H%M%SZ").to_string(),
        ));
    }
    if !amz_date.starts_with(auth.date) {
        return Err(AuthError::Malformed(
            "the credential date does not match x-amz-date".into(),
        ));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(AuthError::Malformed(
            "the host header must be signed".into(),
        ));
    }

    let declared = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    let payload_hash = match (declared, payload) {
        (Some(d), Payload::Known(body))
            if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            if !d.eq_ignore_ascii_case(&sha256_hex(body)) {
                return Err(AuthError::PayloadHashMismatch);
            }
            d.to_string()
        }
        (Some(d), _) => d.to_string(),
        (None, Payload::Known(body)) => sha256_hex(body),
        (None, Payload::Streaming) => EMPTY_SHA256.to_string(),
    };

    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = canonical_header_value(req.headers, name)
            .ok_or_else(|| AuthError::Malformed(format!("signed header {name} is missing")))?;
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path, expected_service != "s3"),
        canonical_query(req.query),
        canonical_headers,
        auth.signed_headers.join(";"),
        payload_hash
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = [auth.date, auth.region, auth.service, "aws4_request"]
        .iter()
        .fold(
            format!("AWS4{}", creds.secret_key).into_bytes(),
            |key, part| hmac(&key, part.as_bytes()),
        );
    let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(AuthError::SignatureMismatch);
    }
    Ok(Scope {
        access_key: auth.access_key.into(),
        region: auth.region.into(),
        service: auth.service.into(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // The "get-vanilla" example of the public SigV4 test suite.
    fn vanilla() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
        );
        h
    }

    fn creds() -> Vec<Credentials> {
        vec![Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        }]
    }

    fn at(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
            .unwrap()
            .and_utc()
    }

    #[test]
    fn accepts_the_reference_signature() {
        let h = vanilla();
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let scope = verify(
            &req,
            Payload::Known(b""),
            &creds(),
            "service",
            at("20150830T123600Z"),
        )
        .unwrap();
        assert_eq!(scope.region, "us-east-1");
    }

    #[test]
    fn rejects_a_changed_request_or_key() {
        let h = vanilla();
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
        };
        let now = at("20150830T123600Z");
        assert_eq!(
            verify(&req, Payload::Known(b""), &creds(), "service", now),
            Err(AuthError::SignatureMismatch)
        );
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let wrong = vec![Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "nope".into(),
        }];
        assert_eq!(
            verify(&req, Payload::Known(b""), &wrong, "service", now),
            Err(AuthError::SignatureMismatch)
        );
        let other = vec![Credentials {
            access_key: "OTHER".into(),
            secret_key: "x".into(),
        }];
        assert!(matches!(
            verify(&req, Payload::Known(b""), &other, "service", now),
            Err(AuthError::UnknownKey(_))
        ));
        assert!(matches!(
            verify(&req, Payload::Known(b""), &creds(), "kinesisvideo", now),
            Err(AuthError::WrongService { .. })
        ));
        assert!(matches!(
            verify(
                &req,
                Payload::Known(b""),
                &creds(),
                "service",
                at("20150830T130000Z")
            ),
            Err(AuthError::Expired(..))
        ));
        assert_eq!(
            verify(&req, Payload::Known(b"x"), &creds(), "service", now),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn missing_authorization_is_its_own_error() {
        let h = HeaderMap::new();
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        assert_eq!(
            verify(&req, Payload::Streaming, &creds(), "service", Utc::now()),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(
            canonical_query("b=2&a=1&a=0&c=x%20y"),
            "a=0&a=1&b=2&c=x%20y"
        );
    }
}
