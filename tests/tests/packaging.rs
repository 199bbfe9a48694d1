//! Packaging, on the binaries this build made:
//! - `scripts/package-deb` (`make deb`): the package holds the binaries, units, example
//!   configurations and conffiles, manual pages, declares its GStreamer dependencies, its
//!   postinst enables and starts nothing (run here with a systemctl that records what it is
//!   asked), and Debian's own checker, lintian, finds no error and no warning in it;
//! - `scripts/package-lambda` (`make lambda`): a zip with an executable `bootstrap` that
//!   Amazon Linux 2023's glibc can run, which serves the Lambda Runtime API configured the
//!   way infra/kvs-edge.yaml configures it (`KVS_EDGE_ARCHIVER_CONFIG_TOML`).

use std::process::Command;

use kvs_edge_tests::*;

/// Runs `scripts/<script>` on the binaries this build made (dev profile, no build) into
/// `out`; the path of what it made (the first word it prints).
fn package(script: &str, args: &[&str], out: &std::path::Path) -> anyhow::Result<String> {
    let run = Command::new(repo_root().join("scripts").join(script))
        .args(["--profile", "dev", "--no-build"])
        .args(args)
        .arg("--out")
        .arg(out)
        .env(
            "CARGO_TARGET_DIR",
            agent_binary()?.parent().unwrap().parent().unwrap(),
        )
        .output()?;
    anyhow::ensure!(
        run.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout)?;
    Ok(stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

#[test]
fn the_deb_has_binaries_units_examples_and_a_postinst_that_starts_nothing() -> anyhow::Result<()> {
    let out_dir = tempfile::tempdir()?;
    let deb = package("package-deb", &["--compress", "gzip"], out_dir.path())?;
    assert!(deb.ends_with(".deb"), "{deb}");

    let listing = Command::new("dpkg-deb").arg("-c").arg(&deb).output()?;
    let listing = String::from_utf8(listing.stdout)?;
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/kvs-edge-agent"),
        ("-rwxr-xr-x", "./usr/bin/kvs-edge-archiver"),
        ("-rw-r--r--", "./lib/systemd/system/kvs-edge-agent.service"),
        (
            "-rw-r--r--",
            "./lib/systemd/system/kvs-edge-archiver-sqs.service",
        ),
        ("-rw-r--r--", "./usr/share/doc/kvs-edge/examples/agent.toml"),
        (
            "-rw-r--r--",
            "./usr/share/doc/kvs-edge/examples/archiver.toml",
        ),
        ("-rw-r--r--", "./usr/share/doc/kvs-edge/operator-guide.md"),
        ("-rw-r--r--", "./etc/default/kvs-edge-agent"),
        ("drwx------", "./etc/kvs-edge/credentials/"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{mode} {path} in:\n{listing}"
        );
    }
    assert!(
        !listing.contains("./etc/kvs-edge/agent.toml"),
        "no configuration is installed, so nothing starts"
    );
    let field = |name: &str| -> anyhow::Result<String> {
        let o = Command::new("dpkg-deb").args(["-f", &deb, name]).output()?;
        Ok(String::from_utf8(o.stdout)?.trim().to_string())
    };
    assert_eq!(field("Package")?, "kvs-edge");
    assert!(field("Depends")?.contains("gstreamer1.0-plugins-ugly"));

    // The maintainer scripts, with systemd "running" as far as they can tell: systemctl is
    // a recorder first in PATH.
    let control = out_dir.path().join("control");
    assert!(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(&control)
            .status()?
            .success()
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles"))?;
    assert!(conffiles.contains("/etc/default/kvs-edge-agent"));
    let bin = out_dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    let calls = out_dir.path().join("systemctl-calls");
    std::fs::write(
        bin.join("systemctl"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )?;
    Command::new("chmod")
        .arg("+x")
        .arg(bin.join("systemctl"))
        .status()?;
    let script = std::fs::read_to_string(control.join("postinst"))?
        .replace("[ -d /run/systemd/system ]", "true");
    let postinst = out_dir.path().join("postinst");
    std::fs::write(&postinst, script)?;
    let run = Command::new("sh")
        .arg(&postinst)
        .arg("configure")
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH")?),
        )
        .output()?;
    assert!(run.status.success());
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(asked.trim(), "--system daemon-reload", "{asked}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("systemctl enable --now kvs-edge-agent"));
    // The prerm stops the services the way debhelper's snippets do.
    let prerm = std::fs::read_to_string(control.join("prerm"))?;
    assert!(
        prerm.contains("deb-systemd-invoke stop kvs-edge-agent.service"),
        "{prerm}"
    );
    assert!(!prerm.contains("systemctl"), "{prerm}");
    Ok(())
}

#[test]
fn lintian_finds_no_error_and_no_warning_in_the_deb() -> anyhow::Result<()> {
    let out_dir = tempfile::tempdir()?;
    let deb = package("package-deb", &["--compress", "gzip"], out_dir.path())?;
    let listing = Command::new("dpkg-deb").arg("-c").arg(&deb).output()?;
    let listing = String::from_utf8(listing.stdout)?;
    for page in ["kvs-edge-agent.1.gz", "kvs-edge-archiver.1.gz"] {
        assert!(
            listing.contains(&format!("./usr/share/man/man1/{page}")),
            "{page} in:\n{listing}"
        );
    }
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--fail-on", "error,warning"])
        .arg(&deb)
        .output()
        .map_err(|e| anyhow::anyhow!("lintian (scripts/install-deps installs it): {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && !said
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_zip_holds_a_bootstrap_that_serves_invocations() -> anyhow::Result<()> {
    use kvs_edge_tests::lambda_api::LambdaApi;
    let out_dir = tempfile::tempdir()?;
    let zip = package("package-lambda", &[], out_dir.path())?;
    // Unpacked as Lambda does; the mode bits survive.
    let unpacked = out_dir.path().join("task");
    let listing = python(
        r#"
import sys, zipfile, json
z = zipfile.ZipFile(sys.argv[1])
info = z.getinfo("bootstrap")
z.extractall(sys.argv[2])
print(json.dumps({"names": z.namelist(), "mode": oct(info.external_attr >> 16)}))
"#,
        &[&zip, unpacked.to_str().unwrap()],
    )?;
    let listing: serde_json::Value = serde_json::from_str(listing.trim())?;
    assert_eq!(listing["names"], serde_json::json!(["bootstrap"]));
    assert_eq!(listing["mode"], "0o100755");
    let bootstrap = unpacked.join("bootstrap");
    std::fs::set_permissions(
        &bootstrap,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;

    // Configured through the environment, as the template does; an S3 Batch Operations
    // invocation of a non-clip is answered without touching any service.
    let invocation: serde_json::Value = serde_json::from_slice(&std::fs::read(repo_root().join(
        "tests/fixtures/aws-events/s3-batch-ops-lambda-invocation-schema-1.0.awsdocs.json",
    ))?)?;
    let mut api = LambdaApi::start(vec![invocation]).await?;
    let mut function = Command::new(&bootstrap);
    function
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "KVS_EDGE_ARCHIVER_CONFIG_TOML",
            "bucket = \"clips\"\n[transcode]\nmode = \"mediaconvert\"\nrole_arn = \"arn:aws:iam::123456789012:role/mc\"\nendpoint_url = \"http://127.0.0.1:9\"\n",
        );
    let (_, kind, body) = api.run_function(function, 1).await?.remove(0);
    assert_eq!(kind, "response", "{body}");
    assert_eq!(
        body["results"][0]["resultCode"], "PermanentFailure",
        "{body}"
    );
    assert!(
        body["results"][0]["resultString"]
            .as_str()
            .unwrap()
            .contains("not a clip"),
        "{body}"
    );
    Ok(())
}
