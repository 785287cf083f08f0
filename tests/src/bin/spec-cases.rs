//! `spec-cases`: runs executable spec case files against vfio-core.
//!
//! ```text
//! cargo run -p vfio-tests --bin spec-cases -- [--only PREFIX] [--no-emulated] [--path abi|typed|both] FILE...
//! ```
//!
//! `--path` chooses how the core is driven: `abi` through the byte-level dispatcher
//! (`Vfio::ioctl`), `typed` through the typed API (the harness decodes each ioctl buffer
//! itself), `both` (the default) through both, a case passing only when both paths pass
//! and every observation is identical.
//!
//! Prints one line per case (`PASS …`, `FAIL …: reason`, `SKIP …: reason`) and a closing
//! `N passed, N failed[, N skipped]` line; exits 1 when any case failed, 2 on usage or
//! file errors.

use std::path::PathBuf;
use std::process::ExitCode;

use vfio_tests::registry::{registry_builder, typed_registry_builder};
use vfio_tests::runner::{run_path, DispatchPath, Options, Totals};

const USAGE: &str =
    "usage: spec-cases [--only PREFIX] [--no-emulated] [--path abi|typed|both] FILE...";

fn main() -> ExitCode {
    let mut only = None;
    let mut no_emulated = false;
    let mut path = DispatchPath::Both;
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
            "--path" => match args.next().as_deref().and_then(DispatchPath::parse) {
                Some(p) => path = p,
                None => {
                    eprintln!("--path needs abi, typed or both\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            s if s.starts_with("--path=") => match DispatchPath::parse(&s["--path=".len()..]) {
                Some(p) => path = p,
                None => {
                    eprintln!("--path needs abi, typed or both\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
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
        typed_builder: Some(&typed_registry_builder),
        path,
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
