//! `spec-cases`: runs executable spec case files against vfio-core.
//!
//! ```text
//! cargo run -p vfio-tests --bin spec-cases -- [--only PREFIX] [--no-emulated] FILE...
//! ```
//!
//! Prints one line per case (`PASS …`, `FAIL …: reason`, `SKIP …: reason`) and a closing
//! `N passed, N failed[, N skipped]` line; exits 1 when any case failed, 2 on usage or
//! file errors.

use std::path::PathBuf;
use std::process::ExitCode;

use vfio_tests::registry::registry_builder;
use vfio_tests::runner::{run_path, Options, Totals};

const USAGE: &str = "usage: spec-cases [--only PREFIX] [--no-emulated] FILE...";

fn main() -> ExitCode {
    let mut only = None;
    let mut no_emulated = false;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => match args.next() {
                Some(p) => only = Some(p),
                None => {
                    eprintln!("--only needs a PREFIX\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--no-emulated" => no_emulated = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with("--only=") => only = Some(s["--only=".len()..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                eprintln!("unknown option `{s}`\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => files.push(PathBuf::from(arg)),
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let opts = Options {
        only,
        no_emulated,
        builder: Some(&registry_builder),
    };
    let mut all = Vec::new();
    let mut file_errors = 0;
    for path in &files {
        match run_path(path, &opts) {
            Ok(reports) => {
                for r in &reports {
                    println!("{r}");
                }
                all.extend(reports);
            }
            Err(e) => {
                eprintln!("error: {e}");
                file_errors += 1;
            }
        }
    }
    let totals = Totals::of(&all);
    println!("{totals}");
    if file_errors > 0 {
        ExitCode::from(2)
    } else if totals.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
