//! `credentials.kind = "default"`: the AWS SDK's default chain, as deployments use it —
//! keys from the environment, or a named profile in a shared credentials file.

mod common;

fn default_chain_toml(url: &str, stream: &str, state: &std::path::Path) -> String {
    common::agent_toml(url, stream, state).replace(
        "kind = \"static\"\n        access_key_id = \"kvslocal\"\n        secret_access_key = \"kvslocal-secret\"",
        "kind = \"default\"",
    )
}

async fn stream_with(env: Vec<(String, String)>, stream: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = kvs_local::Server::start(kvs_local::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
    ))
    .await
    .unwrap();
    let toml = default_chain_toml(&server.url(), stream, dir.path());
    assert!(toml.contains("kind = \"default\""));
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml).unwrap();
    let (status, seen) = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        common::run_agent(&config, &env, 2)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}\n{seen:#?}");
    common::assert_nothing_lost(&seen);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_environment() {
    let env = [
        ("AWS_ACCESS_KEY_ID", "kvslocal"),
        ("AWS_SECRET_ACCESS_KEY", "kvslocal-secret"),
    ];
    stream_with(
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        "env-cam",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_named_profile() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(&file, "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[edge]\naws_access_key_id = kvslocal\naws_secret_access_key = kvslocal-secret\n").unwrap();
    let env = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            file.display().to_string(),
        ),
        ("AWS_PROFILE".to_string(), "edge".to_string()),
    ];
    stream_with(env, "profile-cam").await;
}
