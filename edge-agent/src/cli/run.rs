//! `edge-agent run`: load the tag map and hand it to the service (`runtime/`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use flowsquare_service::Notifier;

use super::CliError;
use crate::runtime::RuntimeError;

pub async fn run(path: &Path, output: &str, stats_every: Duration) -> Result<ExitCode, CliError> {
    let notifier = Notifier::from_env();
    let map = super::load_map(path)?;
    super::release_startup_memory();
    crate::runtime::run(map, path, output == "jsonl", stats_every, notifier)
        .await
        .map_err(|e| match e {
            RuntimeError::Buffer(e) => CliError::Usage(e.to_string()),
            RuntimeError::Io(e) => CliError::Io(e),
        })?;
    Ok(ExitCode::SUCCESS)
}
