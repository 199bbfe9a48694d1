//! Crash loop: the agent binary is killed with SIGKILL at seeded random points, 20 times,
//! while streaming and while replaying a backlog (some cycles run during an outage), then
//! runs once more until everything is delivered. Every fragment it reported as journaled
//! (the log line comes after the fsync) must be in KVS. A fragment the service stored just
//! before a kill, whose ack the agent never saw, is sent again and stored twice, as the
//! service does; reads (GetClip, HLS) deduplicate producer timestamps.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const CYCLES: usize = 20;
const SEED: u64 = 0x6b76_732d_6564_6765;

/// xorshift64*: a seeded sequence, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn value(line: &str, key: &str) -> Option<i64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let server = kvs_local::Server::start(kvs_local::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("kvs"),
    ))
    .await
    .unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        common::agent_toml(&server.url(), "crash-cam", dir.path())
            .replace("fragment_duration_ms = 1000", "fragment_duration_ms = 500"),
    )
    .unwrap();
    let mut rng = Rng(SEED);
    let mut journaled = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut outage_cycles = 0;
    for cycle in 0..CYCLES {
        // A third of the cycles run during an outage, so later ones replay a backlog.
        let outage = rng.next().is_multiple_of(3);
        outage_cycles += usize::from(outage);
        server.set_faults(kvs_local::Faults {
            refuse_connections: outage,
            ..Default::default()
        });
        let kill_after = Duration::from_millis(400 + rng.next() % 2200);
        let (mut child, rx) = common::spawn_agent(&config, &[]);
        // The random point of death: the time waited is the experiment, not synchronisation.
        let lines: Vec<String> = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + kill_after;
            let mut lines = Vec::new();
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            lines.extend(rx.try_iter());
            lines
        })
        .await
        .unwrap();
        for l in &lines {
            if l.contains("journaled") {
                journaled.insert(value(l, "timecode").expect("journaled lines carry the timecode"));
            } else if l.contains("PERSISTED") {
                acked.insert(value(l, "timecode").expect("PERSISTED lines carry the timecode"));
            }
        }
        println!(
            "cycle {cycle}: outage {outage}, killed after {kill_after:?}, journaled so far {}",
            journaled.len()
        );
    }
    assert!(outage_cycles >= 3, "some cycles ran during an outage");

    // A last run with KVS up, until every journaled fragment is delivered.
    server.set_faults(kvs_local::Faults::default());
    let (mut child, rx) = common::spawn_agent(&config, &[]);
    let wanted = journaled.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut started = false;
        let give_up = std::time::Instant::now() + 5 * common::BOUND;
        while !(started && wanted.is_subset(&acked)) {
            let line = rx.recv_timeout(common::BOUND);
            let Ok(l) = line
                .ok()
                .filter(|_| std::time::Instant::now() < give_up)
                .ok_or(())
            else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "missing {:?}",
                    wanted.difference(&acked).collect::<Vec<_>>()
                ));
            };
            started |= l.contains("agent started");
            if l.contains("PERSISTED")
                && let Some(tc) = value(&l, "timecode")
            {
                acked.insert(tc);
            }
            seen.push(l);
        }
        assert!(
            Command::new("kill")
                .arg(child.id().to_string())
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        seen.extend(rx.try_iter());
        Ok((status, seen))
    })
    .await
    .unwrap();
    let (status, seen) = outcome.expect("every journaled fragment delivered");
    assert!(
        status.success(),
        "{status:?}: {:#?}",
        &seen[seen.len().saturating_sub(15)..]
    );

    let media = aws_sdk_kinesisvideoarchivedmedia::Client::from_conf(
        aws_sdk_kinesisvideoarchivedmedia::Config::builder()
            .behavior_version(aws_sdk_kinesisvideoarchivedmedia::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesisvideoarchivedmedia::config::Region::new(
                "us-east-1",
            ))
            .endpoint_url(server.url())
            .credentials_provider(aws_sdk_kinesisvideoarchivedmedia::config::Credentials::new(
                "kvslocal",
                "kvslocal-secret",
                None,
                None,
                "test",
            ))
            .build(),
    );
    let listed = media
        .list_fragments()
        .stream_name("crash-cam")
        .max_results(1000)
        .send()
        .await
        .unwrap();
    let stored: Vec<i64> = listed
        .fragments
        .unwrap_or_default()
        .iter()
        .map(|f| f.producer_timestamp.unwrap().to_millis().unwrap())
        .collect();
    let copies = stored.len();
    let stored: BTreeSet<i64> = stored.into_iter().collect();
    let twice = copies - stored.len();
    assert!(
        twice <= CYCLES * 16,
        "at most the fragments in flight at each kill are stored again: {twice}"
    );
    // Float epoch seconds can land a millisecond low in ListFragments.
    let lost: Vec<&i64> = journaled
        .iter()
        .filter(|t| !stored.contains(t) && !stored.contains(&(**t - 1)))
        .collect();
    println!(
        "captured (journaled) {}, persisted {}, stored again after a kill {twice}, lost {}",
        journaled.len(),
        stored.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    server.stop().await;
}
