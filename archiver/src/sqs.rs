//! The SQS consumer: long-polls the queue an EventBridge rule feeds, handles each message
//! like `handle-event` (its body is the event), and deletes it once every clip it asked for
//! is stored (or was already there). While a message is being worked on its visibility is
//! extended, so no other consumer takes it. Malformed messages go to the dead-letter queue
//! at once (or are deleted, without one): they would never succeed. Failed clips stay on the
//! queue to be retried, until `max_receives`, then go to the dead-letter queue too.
//! On shutdown no new messages are taken, and the ones in hand are finished.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use kvs_edge_config::archiver::SqsSettings;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::clip::Archiver;
use crate::store::error_chain;

/// What became of a message (one JSON line each on standard output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Done: deleted from the queue.
    Done,
    /// Left on the queue to be received again.
    Retry(String),
    /// Moved to the dead-letter queue (or deleted, without one).
    DeadLetter(String),
}

pub struct Consumer {
    pub archiver: Arc<Archiver>,
    pub sqs: Client,
    pub settings: SqsSettings,
    pub queue_url: String,
    pub stats: Arc<ConsumerStats>,
}

/// What the consumer has done (systemd's STATUS= and watchdog read these).
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// ReceiveMessage calls answered (with messages, none, or an error).
    pub polls: AtomicU64,
    pub in_hand: AtomicU64,
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl ConsumerStats {
    /// One line: `3 done, 1 retried, 0 dead-lettered, 2 in hand`.
    pub fn line(&self) -> String {
        let r = Ordering::Relaxed;
        format!(
            "{} done, {} retried, {} dead-lettered, {} in hand",
            self.done.load(r),
            self.retried.load(r),
            self.dead_lettered.load(r),
            self.in_hand.load(r)
        )
    }
}

impl Consumer {
    /// Runs until `shutdown`; returns after the messages in hand are finished.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut work = JoinSet::new();
        info!(queue = %self.queue_url, "consuming");
        loop {
            let free = tokio::select! {
                p = slots.clone().acquire_many_owned(1) => p.expect("semaphore open"),
                _ = shutdown.wait_for(|s| *s) => break,
            };
            drop(free);
            let want = slots.available_permits().clamp(1, 10) as i32;
            let received = tokio::select! {
                r = self
                    .sqs
                    .receive_message()
                    .queue_url(&self.queue_url)
                    .max_number_of_messages(want)
                    .wait_time_seconds(20)
                    .visibility_timeout(self.settings.visibility_timeout_s as i32)
                    .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                    .send() => r,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            self.stats.polls.fetch_add(1, Ordering::Relaxed);
            let messages = match received {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    error!("ReceiveMessage {}: {}", self.queue_url, error_chain(&e));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            };
            for m in messages {
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                let me = self.clone();
                me.stats.in_hand.fetch_add(1, Ordering::Relaxed);
                work.spawn(async move {
                    me.message(m).await;
                    me.stats.in_hand.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            while work.try_join_next().is_some() {}
        }
        info!("shutting down: finishing {} message(s) in hand", work.len());
        while work.join_next().await.is_some() {}
    }

    async fn message(&self, m: aws_sdk_sqs::types::Message) {
        let (Some(receipt), Some(body)) = (m.receipt_handle.clone(), m.body.clone()) else {
            return;
        };
        let id = m.message_id.clone().unwrap_or_default();
        let receives: u32 = m
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        // Keep the message hidden while its clips are made.
        let keep = {
            let (sqs, url, receipt) = (self.sqs.clone(), self.queue_url.clone(), receipt.clone());
            let every = Duration::from_secs(u64::from(self.settings.visibility_timeout_s) / 2);
            let timeout = self.settings.visibility_timeout_s as i32;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = sqs
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(&receipt)
                        .visibility_timeout(timeout)
                        .send()
                        .await
                    {
                        warn!("ChangeMessageVisibility: {}", error_chain(&e));
                    }
                }
            })
        };
        let (fate, outcomes) = self.handle(&body).await;
        keep.abort();
        let fate = match fate {
            Fate::Retry(reason) if receives >= self.settings.max_receives => {
                Fate::DeadLetter(format!(
                    "received {receives} times (max_receives {}); last: {reason}",
                    self.settings.max_receives
                ))
            }
            f => f,
        };
        let settled = match &fate {
            Fate::Done => self.delete(&receipt).await,
            Fate::Retry(_) => Ok(()),
            Fate::DeadLetter(reason) => self.dead_letter(&body, reason, &receipt).await,
        };
        if let Err(e) = settled {
            error!(message = %id, "{e}");
        }
        let counter = match &fate {
            Fate::Done => &self.stats.done,
            Fate::Retry(_) => &self.stats.retried,
            Fate::DeadLetter(_) => &self.stats.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (result, reason) = match &fate {
            Fate::Done => ("done", None),
            Fate::Retry(r) => ("retry", Some(r.clone())),
            Fate::DeadLetter(r) => ("dead-letter", Some(r.clone())),
        };
        println!(
            "{}",
            json!({"message_id": id, "receives": receives, "result": result, "reason": reason, "outcomes": outcomes})
        );
    }

    /// The message's decisions, carried out.
    async fn handle(&self, body: &str) -> (Fate, Vec<Value>) {
        let decisions = match crate::decisions(&self.archiver.cfg, body.as_bytes()) {
            Ok(d) => d,
            Err(e) => return (Fate::DeadLetter(format!("malformed: {e}")), Vec::new()),
        };
        let mut outcomes = Vec::new();
        let mut failed = false;
        for d in decisions {
            let (o, f) = self.archiver.carry_out(d).await;
            outcomes.extend(o);
            failed |= f;
        }
        if failed {
            let why = outcomes
                .iter()
                .find(|o| o["result"] == "failed" || o["transcode"]["error"].is_string())
                .map(Value::to_string)
                .unwrap_or_default();
            (Fate::Retry(why), outcomes)
        } else {
            (Fate::Done, outcomes)
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), String> {
        self.sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("DeleteMessage: {}", error_chain(&e)))
    }

    async fn dead_letter(&self, body: &str, reason: &str, receipt: &str) -> Result<(), String> {
        match &self.settings.dlq_url {
            Some(dlq) => {
                warn!(dlq, "to the dead-letter queue: {reason}");
                let why = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(reason.chars().take(1024).collect::<String>())
                    .build()
                    .map_err(|e| e.to_string())?;
                self.sqs
                    .send_message()
                    .queue_url(dlq)
                    .message_body(body)
                    .message_attributes("kvs-edge-error", why)
                    .send()
                    .await
                    .map_err(|e| format!("SendMessage to {dlq}: {}", error_chain(&e)))?;
            }
            None => warn!("dropped (no dlq_url configured): {reason}"),
        }
        self.delete(receipt).await
    }
}
