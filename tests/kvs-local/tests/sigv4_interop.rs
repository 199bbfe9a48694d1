//! kvs-local's SigV4 verifier against requests signed by the AWS SDK's own signer
//! (`aws-sigv4`), in every payload form a KVS client uses: hashed body, empty-body hash
//! (the C producer's PutMedia), `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (the Java producer's
//! PutMedia) and `UNSIGNED-PAYLOAD`.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use kvs_local::sigv4::{self, AuthError, Credentials, Payload};

const KEY: &str = "kvslocal";
const SECRET: &str = "kvslocal-secret";

fn signed(
    body: SignableBody<'_>,
    checksum: PayloadChecksumKind,
    secret: &str,
    at: SystemTime,
) -> HeaderMap {
    let identity =
        AwsCredentials::new(KEY, secret, Some("session-token".into()), None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = checksum;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("kinesisvideo")
        .time(at)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers = [
        ("host", "127.0.0.1:4567"),
        ("x-amzn-stream-name", "cam  one"),
        ("content-type", "application/json"),
    ];
    let req = SignableRequest::new(
        "POST",
        "http://127.0.0.1:4567/putMedia",
        headers.into_iter(),
        body,
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut request = http::Request::builder()
        .method("POST")
        .uri("http://127.0.0.1:4567/putMedia");
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let mut request = request.body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    request.headers().clone()
}

fn verify(
    headers: &HeaderMap,
    payload: Payload<'_>,
    now: SystemTime,
) -> Result<sigv4::Scope, AuthError> {
    let req = sigv4::Request {
        method: "POST",
        path: "/putMedia",
        query: "",
        headers,
    };
    let creds = [Credentials {
        access_key: KEY.into(),
        secret_key: SECRET.into(),
    }];
    sigv4::verify(
        &req,
        payload,
        &creds,
        "kinesisvideo",
        DateTime::<Utc>::from(now),
    )
}

#[test]
fn every_payload_form_verifies() {
    let now = SystemTime::now();
    let body = br#"{"StreamName":"cam"}"#;
    let h = signed(
        SignableBody::Bytes(body),
        PayloadChecksumKind::NoHeader,
        SECRET,
        now,
    );
    assert_eq!(
        verify(&h, Payload::Known(body), now).unwrap().region,
        "eu-west-1"
    );
    assert_eq!(
        verify(&h, Payload::Known(b"{}"), now),
        Err(AuthError::SignatureMismatch),
        "body is covered"
    );

    let h = signed(
        SignableBody::Bytes(body),
        PayloadChecksumKind::XAmzSha256,
        SECRET,
        now,
    );
    verify(&h, Payload::Known(body), now).unwrap();
    assert_eq!(
        verify(&h, Payload::Known(b"{}"), now),
        Err(AuthError::PayloadHashMismatch)
    );

    let h = signed(
        SignableBody::Bytes(&[]),
        PayloadChecksumKind::NoHeader,
        SECRET,
        now,
    );
    verify(&h, Payload::Streaming, now).expect("the C producer's PutMedia form");

    let h = signed(
        SignableBody::Precomputed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into()),
        PayloadChecksumKind::XAmzSha256,
        SECRET,
        now,
    );
    verify(&h, Payload::Streaming, now).expect("the Java producer's PutMedia form");

    let h = signed(
        SignableBody::UnsignedPayload,
        PayloadChecksumKind::XAmzSha256,
        SECRET,
        now,
    );
    verify(&h, Payload::Streaming, now).expect("UNSIGNED-PAYLOAD");
}

#[test]
fn wrong_secret_and_stale_dates_fail() {
    let now = SystemTime::now();
    let h = signed(
        SignableBody::Bytes(&[]),
        PayloadChecksumKind::NoHeader,
        "other-secret",
        now,
    );
    assert_eq!(
        verify(&h, Payload::Streaming, now),
        Err(AuthError::SignatureMismatch)
    );
    let h = signed(
        SignableBody::Bytes(&[]),
        PayloadChecksumKind::NoHeader,
        SECRET,
        now - Duration::from_secs(20 * 60),
    );
    assert!(matches!(
        verify(&h, Payload::Streaming, now),
        Err(AuthError::Expired(..))
    ));
}
