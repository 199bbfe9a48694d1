//! infra/kvs-edge.yaml: cfn-lint (AWS's CloudFormation linter, from the project's venv)
//! finds nothing, and tests/python/check_infra.py checks what it does not: least-privilege
//! policies, the clip bucket's protections, and devices scoped to their own streams and
//! topics.

use std::process::Command;

use kvs_edge_tests::*;

#[test]
fn cfn_lint_passes_the_template() -> anyhow::Result<()> {
    let cfn_lint = venv_python()?.with_file_name("cfn-lint");
    let out = Command::new(cfn_lint)
        .arg(repo_root().join("infra/kvs-edge.yaml"))
        .output()?;
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn policies_are_least_privilege_and_devices_are_scoped() -> anyhow::Result<()> {
    let out = Command::new(venv_python()?)
        .arg(repo_root().join("tests/python/check_infra.py"))
        .arg(repo_root().join("infra/kvs-edge.yaml"))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "infra: ok");
    Ok(())
}
