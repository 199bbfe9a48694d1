//! The monitoring pack (`monitoring/`): the Prometheus alert rules pass `promtool check rules`
//! and their own unit tests (`promtool test rules`), the Grafana dashboard is valid JSON whose
//! every query parses as PromQL, and every metric the rules and the dashboard use is one that
//! a running agent (streaming to kvs-local, connected to mosquitto) exports on `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kvs_edge_agent::runner;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);

fn monitoring() -> PathBuf {
    repo_root().join("monitoring")
}

/// `promtool <args>` in `dir`: its output, or an error with it.
fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("promtool (Debian's prometheus package; scripts/install-deps installs it)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {}: {text}", args.join(" "));
    Ok(text)
}

fn dashboard() -> Result<serde_json::Value> {
    let path = monitoring().join("grafana/kvs-edge-agent.json");
    serde_json::from_slice(&std::fs::read(&path)?).with_context(|| path.display().to_string())
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The `kvs_edge_*` metric names a text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("kvs_edge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() -> Result<()> {
    let dir = monitoring().join("prometheus");
    let checked = promtool(&dir, &["check", "rules", "kvs-edge-agent.rules.yml"])?;
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "kvs-edge-agent.rules.test.yml"])?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn the_dashboard_is_valid_and_its_queries_parse() -> Result<()> {
    let d = dashboard()?;
    assert_eq!(d["uid"], "kvs-edge-agent");
    let panels = d["panels"].as_array().context("panels")?;
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        ensure!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {title} queries nothing"
        );
    }
    // promtool parses PromQL only inside rules: each query becomes a recording rule.
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= panels.len());
    let rules = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("      - record: dashboard_query_{i}\n        expr: {q:?}\n"))
        .collect::<String>();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("dashboard.rules.yml"),
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )?;
    promtool(dir.path(), &["check", "rules", "dashboard.rules.yml"])?;
    Ok(())
}

/// Scrapes `/metrics` until `ready` holds for the text (bounded).
async fn scrape_until(addr: std::net::SocketAddr, ready: impl Fn(&str) -> bool) -> Result<String> {
    let started = Instant::now();
    loop {
        let body = scrape_metrics(addr).await?;
        if ready(&body) {
            return Ok(body);
        }
        if started.elapsed() > BOUND {
            bail!("/metrics never got ready:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_pack_uses_is_exported_by_a_running_agent() -> Result<()> {
    let mut used = metric_names(&std::fs::read_to_string(
        monitoring().join("prometheus/kvs-edge-agent.rules.yml"),
    )?);
    used.extend(
        dashboard_queries(&dashboard()?)
            .iter()
            .flat_map(|q| metric_names(q)),
    );
    assert!(used.len() >= 20, "{used:?}");

    let broker = Mosquitto::start(None)?;
    let local = Local::start().await?;
    let toml = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        mqtt_agent_toml(
            &local.url(),
            &local.dir.path().join("state"),
            "monitored",
            &plain_mqtt(broker.port)
        )
    );
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(
        AgentConfig::from_toml("monitoring.toml", &toml)?,
        shutdown.clone(),
    )
    .await?;
    let addr = running.metrics_addr.context("metrics listener")?;
    let body = scrape_until(addr, |b| {
        b.contains("kvs_edge_mqtt_connected 1")
            && b.contains("kvs_edge_track_info{")
            && !b.contains(
                "kvs_edge_fragments_persisted_total{camera=\"cam\",stream=\"monitored\"} 0",
            )
    })
    .await?;
    let _ = stop.send(true);
    running.wait(shutdown, Duration::from_secs(10)).await;

    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the monitoring pack uses metrics the agent does not export: {missing:?}\n{body}"
    );
    Ok(())
}
