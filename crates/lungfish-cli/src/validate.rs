//! `lungfish validate`: report every problem in pipeline files.

use std::path::PathBuf;
use std::process::ExitCode;

use lungfish::PipelineConfig;

/// Validates each file; prints `FILE:LINE:COL: FIELD: MESSAGE` per problem.
pub fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut bad = 0usize;
    for file in files {
        match PipelineConfig::load(file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(errors) => {
                bad += 1;
                eprintln!("{errors}");
                eprintln!("{}: {} problem(s)", file.display(), errors.len());
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
