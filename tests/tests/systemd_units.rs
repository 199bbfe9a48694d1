//! The systemd units as shipped: `systemd-analyze verify` accepts both (with ExecStart
//! pointed at the binaries this build made, the only change), `systemd-analyze security`
//! scores their exposure at 2.0 or better (the README records the scores), and the agent's
//! unit has what the agent relies on (notify, watchdog, state directory, credentials).

use std::path::Path;
use std::process::Command;

use kvs_edge_tests::*;

/// The unit with ExecStart's /usr/bin/ replaced by this build's directory.
fn installed_copy(unit: &str, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(repo_root().join("systemd").join(unit))?;
    let bin_dir = agent_binary()?.parent().unwrap().to_path_buf();
    let out = dir.join(unit);
    std::fs::write(
        &out,
        text.replace("/usr/bin/", &format!("{}/", bin_dir.display())),
    )?;
    Ok(out)
}

const UNITS: [&str; 2] = ["kvs-edge-agent.service", "kvs-edge-archiver-sqs.service"];

#[test]
fn systemd_analyze_verify_accepts_both_units() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]);
    for u in UNITS {
        cmd.arg(installed_copy(u, dir.path())?);
    }
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
    Ok(())
}

#[test]
fn exposure_scores_are_at_most_2() -> anyhow::Result<()> {
    for u in UNITS {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(repo_root().join("systemd").join(u))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no score for {u}: {text}"));
        assert!(score <= 2.0, "{u}: {score}");
        let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
        assert!(
            readme.contains(&format!("`{u}` | {score:.1} ")),
            "the README records {u}'s score {score:.1}"
        );
    }
    Ok(())
}

#[test]
fn the_agent_unit_has_what_the_agent_relies_on() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_root().join("systemd/kvs-edge-agent.service"))?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=60s",
        "Restart=always",
        "StateDirectory=kvs-edge",
        "After=network-online.target time-sync.target",
        "DynamicUser=yes",
        "SupplementaryGroups=video",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "ConditionPathExists=/etc/kvs-edge/agent.toml",
    ] {
        assert!(lines.contains(&line), "missing {line}");
    }
    // The credentials it loads are the names the example configuration refers to.
    let example = std::fs::read_to_string(repo_root().join("systemd/agent.toml"))?;
    for l in lines
        .iter()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
    {
        let name = l.split(':').next().unwrap();
        assert!(
            example.contains(&format!("\"credential:{name}\"")),
            "{name} is not used by systemd/agent.toml"
        );
    }
    Ok(())
}

#[test]
fn the_example_configurations_pass_the_binaries_own_checks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds)?;
    for name in ["iot-cert.pem", "iot-key.pem", "root-ca.pem"] {
        std::fs::write(creds.join(name), "PEM")?;
    }
    let out = Command::new(agent_binary()?)
        .arg("--check")
        .arg("--config")
        .arg(repo_root().join("systemd/agent.toml"))
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("STATE_DIRECTORY", dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&creds.join("iot-key.pem").display().to_string()),
        "credential:iot-key.pem resolved: {stdout}"
    );
    // What it prints is the effective configuration as TOML: it loads again, with the
    // unit's state directory.
    let effective = kvs_edge_config::AgentConfig::from_toml("effective.toml", &stdout)?;
    assert_eq!(effective.state_dir, dir.path());
    // A state_dir in the file gives way to the unit's StateDirectory=.
    let with_state = dir.path().join("with-state.toml");
    std::fs::write(
        &with_state,
        format!(
            "state_dir = \"kvs-edge-state\"\n{}",
            std::fs::read_to_string(repo_root().join("systemd/agent.toml"))?
        ),
    )?;
    let out = Command::new(agent_binary()?)
        .arg("--check")
        .arg("--config")
        .arg(&with_state)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("STATE_DIRECTORY", dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let effective = kvs_edge_config::AgentConfig::from_toml("effective.toml", &stdout)?;
    assert_eq!(effective.state_dir, dir.path(), "{stdout}");
    // Without the credentials (no LoadCredential=), the check names the setting.
    let out = Command::new(agent_binary()?)
        .arg("--check")
        .arg("--config")
        .arg(repo_root().join("systemd/agent.toml"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials.cert_path"));

    let (decisions, ok) = run_archiver(
        &repo_root().join("systemd/archiver.toml"),
        &[
            "handle-event",
            "--dry-run",
            repo_root()
                .join("tests/fixtures/aws-events/eventbridge-cw-alarm-state-change-single-metric.json")
                .to_str()
                .unwrap(),
        ],
    )?;
    assert!(ok, "{decisions:?}");
    Ok(())
}
