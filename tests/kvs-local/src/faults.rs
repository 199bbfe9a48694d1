//! Fault injection: a documented part of kvs-local's interface (admin API
//! `GET|PUT|DELETE /_kvs-local/faults`, or `Server::set_faults` in-process), not test hooks.
//! Faults are plain data; the server consults them at the points where AWS would fail.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ApiError;

/// The faults in force. Every field defaults to "no fault"; a PUT replaces the whole set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Like a network outage: close open connections and the listening socket, so connection
    /// attempts get ECONNREFUSED until cleared.
    /// (The admin listener, when configured with `--admin-listen`, stays up.)
    pub refuse_connections: bool,
    /// PutMedia: abort the connection (no final chunk) once a session has sent this many bytes.
    pub drop_put_media_after_bytes: Option<u64>,
    /// PutMedia: delay every ack by this many milliseconds (ingest continues meanwhile).
    pub ack_delay_ms: u64,
    /// Answer matching operations with an HTTP error before doing anything.
    pub http_error: Option<HttpErrorFault>,
    /// PutMedia: after this many fragments of a session, answer the next one with an ERROR ack.
    pub put_media_error: Option<PutMediaErrorFault>,
    /// Allow at most `max_per_second` requests per operation; the rest get ClientLimitExceededException.
    pub throttle: Option<ThrottleFault>,
    /// Shifts kvs-local's data clock (server timestamps, retention) by this many milliseconds.
    pub clock_offset_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpErrorFault {
    pub status: u16,
    pub error_type: String,
    #[serde(default)]
    pub message: Option<String>,
    /// Operation names (`PutMedia`, `GetClip`, …); empty = every operation.
    #[serde(default)]
    pub operations: Vec<String>,
    /// How many requests fail; absent = until cleared.
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PutMediaErrorFault {
    pub error_id: u32,
    #[serde(default)]
    pub after_fragments: u32,
    /// How many ERROR acks to send in all (across sessions); absent = until cleared.
    #[serde(default)]
    pub count: Option<u32>,
    /// Send the ack as the real service has been seen to: `"FragmentTimecode": -1` and an
    /// empty `"FragmentNumber"`, naming no fragment.
    #[serde(default)]
    pub without_fragment: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThrottleFault {
    #[serde(default)]
    pub operations: Vec<String>,
    pub max_per_second: u32,
}

fn applies(operations: &[String], op: &str) -> bool {
    operations.is_empty() || operations.iter().any(|o| o == op)
}

/// The fault set in force plus the counters that counted and rate faults need.
#[derive(Default)]
struct Live {
    faults: Faults,
    http_errors_sent: u32,
    put_media_errors_sent: u32,
    /// Per operation: (second, requests in that second).
    windows: HashMap<String, (i64, u32)>,
}

pub struct FaultState {
    live: Mutex<Live>,
    refuse: watch::Sender<bool>,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            live: Mutex::new(Live::default()),
            refuse: watch::Sender::new(false),
        }
    }
}

impl FaultState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set(&self, faults: Faults) {
        let refuse = faults.refuse_connections;
        *self.lock() = Live {
            faults,
            ..Live::default()
        };
        self.refuse.send_replace(refuse);
    }

    pub fn refuse_watch(&self) -> watch::Receiver<bool> {
        self.refuse.subscribe()
    }

    /// The injected ERROR ack for the fragment after `fragments` of a session, if one is due
    /// (and counts it).
    pub fn put_media_error(&self, fragments: u32) -> Option<PutMediaErrorFault> {
        let mut live = self.lock();
        let f = live.faults.put_media_error.clone()?;
        if fragments < f.after_fragments || f.count.is_some_and(|c| live.put_media_errors_sent >= c)
        {
            return None;
        }
        live.put_media_errors_sent += 1;
        Some(f)
    }

    /// The error an operation must fail with now, if any (http_error, then throttle).
    pub fn check(&self, op: &str, now_ms: i64) -> Result<(), ApiError> {
        let mut guard = self.lock();
        let Live {
            faults,
            http_errors_sent,
            windows,
            ..
        } = &mut *guard;
        if let Some(f) = &faults.http_error
            && applies(&f.operations, op)
            && f.count.is_none_or(|c| *http_errors_sent < c)
        {
            *http_errors_sent += 1;
            let message = f
                .message
                .clone()
                .unwrap_or_else(|| format!("injected fault for {op}"));
            return Err(ApiError::new(f.status, f.error_type.clone(), message));
        }
        if let Some(t) = &faults.throttle
            && applies(&t.operations, op)
        {
            let second = now_ms.div_euclid(1000);
            let entry = windows.entry(op.to_string()).or_insert((second, 0));
            if entry.0 != second {
                *entry = (second, 0);
            }
            entry.1 += 1;
            if entry.1 > t.max_per_second {
                return Err(ApiError::client_limit(format!(
                    "Rate exceeded for {op}: more than {} requests per second",
                    t.max_per_second
                )));
            }
        }
        Ok(())
    }
}
