//! `oracle-replay [--era 6.1|7.3] FILE...`: replays kernel oracle files against the project
//! and prints each mismatch, the hardware-model exclusions, and `N passed, N failed`.
//! Exits 1 when any check failed or a file could not be replayed, 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;

use vfio_core::Era;
use vfio_tests::oracle::{era_of, replay, Tally};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut forced: Option<Era> = None;
    let mut files = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--era" {
            match args.next().as_deref().and_then(Era::parse) {
                Some(era) => forced = Some(era),
                None => {
                    eprintln!("usage: oracle-replay [--era 6.1|7.3] FILE...");
                    return ExitCode::from(2);
                }
            }
        } else {
            files.push(PathBuf::from(arg));
        }
    }
    if files.is_empty() {
        eprintln!("usage: oracle-replay [--era 6.1|7.3] FILE...");
        return ExitCode::from(2);
    }
    let mut total = Tally::default();
    let mut broken = false;
    for file in &files {
        let era = forced.unwrap_or_else(|| era_of(file));
        match replay(file, era) {
            Ok(tally) => {
                println!(
                    "{}: {} passed, {} failed",
                    file.display(),
                    tally.passed,
                    tally.failed
                );
                for line in &tally.mismatches {
                    println!("  MISMATCH {line}");
                }
                total.merge(tally);
            }
            Err(message) => {
                println!("ERROR {message}");
                broken = true;
            }
        }
    }
    if !total.exclusions.is_empty() {
        println!("hardware-model exclusions:");
        let mut seen = total.exclusions.clone();
        seen.sort();
        seen.dedup();
        for line in seen {
            println!("  {line}");
        }
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 || broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
