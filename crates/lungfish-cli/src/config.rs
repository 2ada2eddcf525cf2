//! `lungfish config`: the pipeline file's reference, for people and editors.

use std::io::Write;
use std::process::ExitCode;

use lungfish::config::schema;

/// Config commands: print what the pipeline file accepts, generated from the code that
/// reads it.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the JSON Schema of pipeline files (for editors such as Taplo, Even Better TOML).
    Schema,
    /// Print the Markdown reference of every option (docs/reference/config.md).
    Reference,
}

/// Prints the schema or the reference on standard output.
pub fn config(command: Command) -> anyhow::Result<ExitCode> {
    let text = match command {
        Command::Schema => schema::json_schema_text(),
        Command::Reference => schema::markdown(),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
