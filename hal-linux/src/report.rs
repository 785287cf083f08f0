// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The session report: numbered steps with their result and details, printed for a person
//! as they happen, or collected and printed once as JSON (`--json`).

use serde::Serialize;
use serde_json::Value;

/// One step of a session.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Step number, from 1.
    pub number: usize,
    /// What the step did, e.g. "open container".
    pub title: String,
    /// `"ok"` or `"failed"`.
    pub status: &'static str,
    /// Machine-readable details of the step.
    pub details: Value,
}

/// Collects steps and prints them in text or JSON.
#[derive(Debug)]
pub struct Report {
    json: bool,
    steps: Vec<Step>,
}

impl Report {
    /// A report printing text as it goes (`json == false`) or JSON at the end.
    pub fn new(json: bool) -> Report {
        Report {
            json,
            steps: Vec::new(),
        }
    }

    /// Records a successful step; `text` lines are printed under its title in text mode.
    pub fn ok(&mut self, title: &str, details: Value, text: &[String]) {
        self.push(title, "ok", details, text);
    }

    /// Records a failed step.
    pub fn failed(&mut self, title: &str, details: Value, text: &[String]) {
        self.push(title, "failed", details, text);
    }

    fn push(&mut self, title: &str, status: &'static str, details: Value, text: &[String]) {
        let number = self.steps.len() + 1;
        if !self.json {
            let mark = if status == "ok" { "ok" } else { "FAILED" };
            println!("[{number:2}] {title} ... {mark}");
            for line in text {
                println!("     {line}");
            }
        }
        self.steps.push(Step {
            number,
            title: title.to_string(),
            status,
            details,
        });
    }

    /// The recorded steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// `bytes` as two-digit lowercase hex separated by spaces, e.g. `"86 80 0a 15"`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text cells of one config-space dump row, guest-visible beside physical: each
/// guest byte as `" xx"`, or `"*xx"` where it differs from the physical byte at the same
/// index, and each physical byte as `" xx"`. Bytes past the shorter slice are left out
/// of the guest cells.
pub fn compare_row(guest: &[u8], physical: &[u8]) -> (String, String) {
    let cells = guest
        .iter()
        .zip(physical)
        .map(|(a, b)| format!("{}{a:02x}", if a == b { ' ' } else { '*' }))
        .collect();
    let phys = physical.iter().map(|b| format!(" {b:02x}")).collect();
    (cells, phys)
}
