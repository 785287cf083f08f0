// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vfio`: drive a VFIO device-assignment session, by default on a simulated machine built
//! from real devices' config-space images.
//!
//! ```text
//! vfio session [--image FILE] [--json]
//! vfio config [BDF] [--image FILE] [--json]
//! ```

mod abi;
mod config_view;
mod machine;
mod report;
mod session;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(name = "vfio", version, about = "VFIO device assignment on vfio-core")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a complete device-assignment session the way a VMM does: groups, container,
    /// Type1v2, device regions and IRQs, config space, DMA through the IOMMU, MSI-X,
    /// reset, teardown.
    Session {
        /// Build the simulated machine from this one config-space image (256 or 4096
        /// bytes) instead of the built-in set of real devices.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Print one machine-readable JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a function's guest-visible config space beside the physical one, with the
    /// owner (header, capability, raw) and the permission of every byte.
    Config {
        /// The function to show (default: the assigned device, 0000:01:00.0).
        #[arg(value_name = "BDF")]
        bdf: Option<String>,
        /// Build the simulated machine from this one config-space image (256 or 4096
        /// bytes) instead of the built-in set of real devices.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Print one JSON document with the rows and every byte's owner and permission.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Session { image, json } => session::run(image.as_deref(), json),
        Command::Config { bdf, image, json } => {
            config_view::run(bdf.as_deref(), image.as_deref(), json)
        }
    }
}
