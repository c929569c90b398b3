//! `icn config check FILE` before the CLI exists:
//! `cargo run -p icn-tuning --example config_check -- tuning/profiles/wan.toml`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: config_check FILE");
        return ExitCode::from(2);
    };
    match icn_tuning::check_file(path) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(report) => {
            eprintln!("{report}");
            ExitCode::FAILURE
        }
    }
}
