//! `edge-agent check`.

use std::path::Path;
use std::process::ExitCode;

use super::CliError;
use crate::config::Diagnostic;

/// `check` prints its findings on stdout (they are its output), one per line.
fn print_diagnostics(diags: &[Diagnostic]) -> usize {
    for d in diags {
        println!("{d}");
    }
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}
use crate::config::{self, ConfigError, Severity};

pub fn run(path: &Path, deny_warnings: bool) -> Result<ExitCode, CliError> {
    match config::load(path) {
        Ok((map, warnings)) => {
            print_diagnostics(&warnings);
            println!(
                "{}: ok: site {} agent {}, {} device(s), {} tag(s), {} event definition(s), {} warning(s), config hash {}",
                path.display(),
                map.agent.site,
                map.agent.id,
                map.devices.len(),
                map.tags.len(),
                map.events().count(),
                warnings.len(),
                map.hash
            );
            Ok(if deny_warnings && !warnings.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(ConfigError::Invalid(diags)) => {
            let errors = print_diagnostics(&diags);
            let warnings = diags
                .iter()
                .filter(|d| d.severity == Severity::Warning)
                .count();
            println!(
                "{}: {errors} error(s), {warnings} warning(s)",
                path.display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
