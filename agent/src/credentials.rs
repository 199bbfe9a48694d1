//! Where the agent's AWS credentials come from: the environment (as the AWS SDKs read it)
//! or static keys from the config. (The AWS IoT credential provider arrives with its issue
//! work; it will hand out the same `Credentials`.)

use aws_credential_types::Credentials;
use kvs_edge_config::agent::CredentialsConfig;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("credentials.kind = \"environment\" but {0} is not set")]
    MissingEnv(&'static str),
}

pub fn resolve(cfg: &CredentialsConfig) -> Result<Credentials, CredentialsError> {
    match cfg {
        CredentialsConfig::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => Ok(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.clone(),
            None,
            "agent.toml",
        )),
        CredentialsConfig::Environment => {
            let var = |name: &'static str| {
                std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .ok_or(CredentialsError::MissingEnv(name))
            };
            Ok(Credentials::new(
                var("AWS_ACCESS_KEY_ID")?,
                var("AWS_SECRET_ACCESS_KEY")?,
                std::env::var("AWS_SESSION_TOKEN")
                    .ok()
                    .filter(|v| !v.is_empty()),
                None,
                "environment",
            ))
        }
    }
}
