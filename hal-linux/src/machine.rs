// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The simulated machine a session runs on: real devices' config-space images placed at
//! BDFs in IOMMU groups, with host-driver bindings.

use std::io::Read;
use std::path::Path;

use vfio_core::platform::{Bdf, GroupId};
use vfio_sim::{
    corpus, function::CONFIG_SIZE_EXTENDED, Binding, ImageError, ResetRestore, SimFunction,
    SimMachine,
};

/// One function of the machine as the session describes it.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Where it sits.
    pub bdf: Bdf,
    /// Its IOMMU group.
    pub group: GroupId,
    /// Which host driver is bound ("vfio-pci", or a host driver's name).
    pub driver: &'static str,
    /// Where the config image came from and what it is.
    pub description: String,
    /// The function the session assigns.
    pub assign: bool,
}

/// The built-in machine: four real devices.
///
/// * `0000:01:00.0` LSI SAS2008 SAS controller (PCIe; INTx, MSI and MSI-X; VPD, AER),
///   group 1, bound to vfio-pci: the device the session assigns.
/// * `0000:02:00.0` NVIDIA GT218 GPU and `0000:02:00.1` its HDA audio function, group 2:
///   the GPU is bound to vfio-pci but the audio function to a host driver
///   (`snd_hda_intel`), so group 2 is not viable.
/// * `0000:03:00.0` Micron 3400 NVMe SSD, group 3, bound to vfio-pci.
#[rustfmt::skip]
const BUILT_IN: &[(&str, &str, GroupId, &str, bool)] = &[
    ("0000:01:00.0", "1000-0072-sas2008.bin", 1, "vfio-pci", true),
    ("0000:02:00.0", "10de-0a65-gt218-geforce210.bin", 2, "vfio-pci", false),
    ("0000:02:00.1", "10de-0be3-gt218-hda.bin", 2, "snd_hda_intel", false),
    ("0000:03:00.0", "1344-5407-micron-3400-nvme.bin", 3, "vfio-pci", false),
];

/// Builds the built-in machine.
///
/// # Errors
/// A message naming the image that could not be loaded.
pub fn built_in() -> Result<(SimMachine, Vec<Placed>), String> {
    let machine = SimMachine::new();
    let entries = corpus::entries();
    let mut placed = Vec::new();
    for &(name, file, group, driver, assign) in BUILT_IN {
        let bdf = Bdf::parse(name).ok_or_else(|| format!("bad built-in BDF {name}"))?;
        let mut function = corpus::load(file).map_err(|e| format!("corpus image {file}: {e}"))?;
        // A function reset clears Command and the BARs, as real FLR does; the core
        // restores them.
        function.set_reset_restore(ResetRestore::Cleared);
        machine
            .add_function(bdf, function, group)
            .map_err(|e| format!("placing {file} at {bdf}: {e}"))?;
        if driver != "vfio-pci" {
            machine
                .bind_driver(bdf, Binding::Host)
                .map_err(|e| format!("binding {driver} to {bdf}: {e}"))?;
        }
        let description = entries.iter().find(|e| e.file == file).map_or_else(
            || file.to_string(),
            |e| format!("{} ({file})", e.description),
        );
        placed.push(Placed {
            bdf,
            group,
            driver,
            description,
            assign,
        });
    }
    Ok((machine, placed))
}

/// Builds a machine holding only the function of config image `path`, at `0000:01:00.0`
/// in group 1.
///
/// # Errors
/// A message naming the file and what is wrong with the image (unreadable, truncated,
/// longer than 4096 bytes, no device, a bridge, ...). At most 4097 bytes of the file are
/// read.
pub fn from_image(path: &Path) -> Result<(SimMachine, Vec<Placed>), String> {
    // One byte more than the largest config space is enough to refuse a longer file, so a
    // huge file or an endless one (`/dev/zero`) is never read whole.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(CONFIG_SIZE_EXTENDED as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("cannot read image {}: {e}", path.display()))?;
    let mut function = SimFunction::from_image(&bytes).map_err(|e| match e {
        // Only the first 4097 bytes were read: the file's real length is not known.
        ImageError::TooLong { .. } => format!(
            "image {} cannot be assigned: the file is longer than the {CONFIG_SIZE_EXTENDED}-byte \
             extended config space",
            path.display()
        ),
        e => format!("image {} cannot be assigned: {e}", path.display()),
    })?;
    function.set_reset_restore(ResetRestore::Cleared);
    let machine = SimMachine::new();
    let bdf = Bdf::new(0, 1, 0, 0).ok_or("bad BDF")?;
    machine
        .add_function(bdf, function, 1)
        .map_err(|e| format!("placing the function: {e}"))?;
    let placed = vec![Placed {
        bdf,
        group: 1,
        driver: "vfio-pci",
        description: format!("{} ({} bytes)", path.display(), bytes.len()),
        assign: true,
    }];
    Ok((machine, placed))
}
