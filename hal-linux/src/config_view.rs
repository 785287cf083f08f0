// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vfio config`: a spec-aware `lspci -xxx`. Opens one function of the simulated machine
//! through vfio-pci and prints its guest-visible config space beside the physical one,
//! with the owner (header, capability, raw) and the permission of every byte
//! (spec/03 §1–§4).
//!
//! The guest-visible bytes are read through the driver's region entry at the CONFIG
//! region offset, the very call a `read()` of the device file makes
//! (`Vfio::device_read`), after the same first open `VFIO_GROUP_GET_DEVICE_FD` performs.
//! The group and container steps are left out so that any function bound to vfio-pci can
//! be shown, including one whose group is not viable.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};
use vfio_core::pci::{BytePermission, CapSpace, CapVisibility, ConfigSpace, PciDevice, PciDriver};
use vfio_core::platform::{Bdf, PciAccess, Width};
use vfio_core::uapi::region_index;
use vfio_core::vfio::BusDriver;
use vfio_core::Errno;
use vfio_sim::{SimEvents, SimPci};

use crate::machine::{self, Placed};
use crate::report::{compare_row, hex};

type Driver = PciDriver<SimPci, SimEvents>;

/// Registers of the type-0 header (spec/03 §4.1): offset, size, name.
const HEADER_REGS: &[(u16, u16, &str)] = &[
    (0x00, 2, "Vendor ID"),
    (0x02, 2, "Device ID"),
    (0x04, 2, "Command"),
    (0x06, 2, "Status"),
    (0x08, 1, "Revision ID"),
    (0x09, 3, "Class code"),
    (0x0C, 1, "Cache line size"),
    (0x0D, 1, "Latency timer"),
    (0x0E, 1, "Header type"),
    (0x0F, 1, "BIST"),
    (0x10, 4, "BAR0"),
    (0x14, 4, "BAR1"),
    (0x18, 4, "BAR2"),
    (0x1C, 4, "BAR3"),
    (0x20, 4, "BAR4"),
    (0x24, 4, "BAR5"),
    (0x28, 4, "CardBus CIS"),
    (0x2C, 2, "Subsystem vendor"),
    (0x2E, 2, "Subsystem ID"),
    (0x30, 4, "Expansion ROM"),
    (0x34, 1, "Capabilities ptr"),
    (0x35, 3, "reserved"),
    (0x38, 4, "reserved"),
    (0x3C, 1, "Interrupt line"),
    (0x3D, 1, "Interrupt pin"),
    (0x3E, 1, "Min_Gnt"),
    (0x3F, 1, "Max_Lat"),
];

const LEGEND: &str = "per byte: v virtual read-only, V virtual and writable (virtual copy), \
w written through to hardware, r read-only from hardware (writes dropped), \
m mixed bits, x read virtual / written raw, R raw (hardware, unfiltered)";

/// What the view shows of one function.
struct View {
    target: Placed,
    size: usize,
    guest: Vec<u8>,
    physical: Vec<u8>,
    perms: Vec<BytePermission>,
    caps: Vec<Value>,
    cap_text: Vec<String>,
}

/// Runs `vfio config`; prints the view; returns the exit code (0 shown, 1 refused).
pub fn run(bdf: Option<&str>, image: Option<&Path>, json_out: bool) -> ExitCode {
    match build(bdf, image) {
        Ok(view) => {
            if json_out {
                let doc = to_json(&view);
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print_text(&view);
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            if json_out {
                let doc = json!({ "result": "failed", "error": message });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build(bdf: Option<&str>, image: Option<&Path>) -> Result<View, String> {
    let (sim, placed) = match image {
        Some(path) => machine::from_image(path)?,
        None => machine::built_in()?,
    };
    let target = match bdf {
        Some(text) => {
            let want = Bdf::parse(text).ok_or_else(|| format!("bad BDF {text:?}"))?;
            placed
                .iter()
                .find(|p| p.bdf == want)
                .cloned()
                .ok_or_else(|| {
                    let all: Vec<String> = placed.iter().map(|p| p.bdf.to_string()).collect();
                    format!("no function at {want} (the machine has {})", all.join(", "))
                })?
        }
        None => placed
            .iter()
            .find(|p| p.assign)
            .cloned()
            .ok_or("the machine has no device to assign")?,
    };
    if target.driver != "vfio-pci" {
        return Err(format!(
            "{} is bound to the host driver {}, not vfio-pci",
            target.bdf, target.driver
        ));
    }
    let mut driver = PciDriver::new(sim.pci(), sim.events());
    let mut dev = match driver.probe(target.bdf) {
        Ok(dev) => dev,
        Err(Errno::EINVAL) => {
            return Err(format!(
                "vfio-pci probe refused {}: not a type-0 function (EINVAL)",
                target.bdf
            ))
        }
        Err(e) => return Err(format!("vfio-pci probe refused {}: {e}", target.bdf)),
    };
    driver
        .open_device(&mut dev)
        .map_err(|e| format!("opening {} failed: {e}", target.bdf))?;
    let view = read_view(&mut driver, &mut dev, target);
    driver.close_device(&mut dev);
    view
}

fn read_view(
    driver: &mut Driver,
    dev: &mut PciDevice<vfio_sim::SimEvent>,
    target: Placed,
) -> Result<View, String> {
    if let Some(defect) = dev.config().defect() {
        return Err(format!("the device's config space is malformed: {defect}"));
    }
    let size = usize::from(dev.config().size());
    let mut guest = vec![0u8; size];
    let offset = u64::from(region_index::CONFIG) << region_index::OFFSET_SHIFT;
    let n = driver
        .read(dev, offset, &mut guest)
        .map_err(|e| format!("reading the CONFIG region failed: {e}"))?;
    if n != size {
        return Err(format!("CONFIG region read returned {n} of {size} bytes"));
    }
    let mut physical = vec![0u8; size];
    for (i, chunk) in physical.chunks_mut(4).enumerate() {
        let value = driver
            .access_mut()
            .config_read(target.bdf, (i * 4) as u16, Width::Dword)
            .map_err(|e| format!("reading physical config space failed: {e}"))?;
        chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
    }
    let config = dev.config();
    let perms = (0..size)
        .map(|pos| {
            config
                .byte_permission(pos as u16)
                .ok_or_else(|| format!("no permission for byte {pos:#x}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (caps, cap_text) = capabilities(config);
    Ok(View {
        target,
        size,
        guest,
        physical,
        perms,
        caps,
        cap_text,
    })
}

fn capabilities(config: &ConfigSpace) -> (Vec<Value>, Vec<String>) {
    let mut rows = Vec::new();
    let mut text = Vec::new();
    for c in config.capabilities() {
        let visibility = match c.visibility {
            CapVisibility::Kept => "kept",
            CapVisibility::Hidden => "hidden",
            CapVisibility::Placeholder => "placeholder",
        };
        let space = match c.space {
            CapSpace::Standard => "standard",
            CapSpace::Extended => "extended",
        };
        rows.push(json!({
            "name": c.name(), "id": c.id, "offset": c.offset, "len": c.len,
            "space": space, "visibility": visibility,
        }));
        let note = match c.visibility {
            CapVisibility::Kept => String::new(),
            CapVisibility::Hidden => " (hidden: raw)".into(),
            CapVisibility::Placeholder => " (placeholder)".into(),
        };
        text.push(format!("{}@{:#x}+{}{note}", c.name(), c.offset, c.len));
    }
    (rows, text)
}

/// One-letter class of a byte's permission (see [`LEGEND`]).
fn class(p: &BytePermission) -> char {
    if p.raw {
        'R'
    } else if p.raw_write {
        if p.virt == 0 {
            'w'
        } else {
            'x'
        }
    } else if p.virt == 0xFF && p.write == 0 {
        'v'
    } else if p.virt == 0xFF && p.write == 0xFF {
        'V'
    } else if p.virt == 0 && p.write == 0xFF {
        'w'
    } else if p.virt == 0 && p.write == 0 {
        'r'
    } else {
        'm'
    }
}

/// Little-endian value of `bytes` (at most 4).
fn le(bytes: impl Iterator<Item = u8>) -> u32 {
    bytes
        .enumerate()
        .fold(0, |acc, (i, b)| acc | (u32::from(b) << (8 * i)))
}

/// A group of bytes annotated on one line: a header register, an aligned dword of a
/// capability, or a run of raw bytes.
struct Group {
    start: usize,
    len: usize,
    label: String,
}

/// Splits config space into annotation groups.
fn groups(view: &View, config_caps: &[Value]) -> Vec<Group> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < view.size {
        if pos < 0x40 {
            let (off, size, name) = HEADER_REGS
                .iter()
                .copied()
                .find(|&(o, s, _)| usize::from(o) <= pos && pos < usize::from(o + s))
                .unwrap_or((pos as u16, 1, "?"));
            out.push(Group {
                start: usize::from(off),
                len: usize::from(size),
                label: name.to_string(),
            });
            pos = usize::from(off + size);
            continue;
        }
        let p = &view.perms[pos];
        let mut end = pos + 1;
        if p.raw {
            while end < view.size && view.perms[end].raw {
                end += 1;
            }
            out.push(Group {
                start: pos,
                len: end - pos,
                label: "raw".into(),
            });
        } else {
            // Up to the next dword boundary within the same owner.
            while end < view.size && end % 4 != 0 && view.perms[end].owner_kind == p.owner_kind {
                end += 1;
            }
            let cap_start = config_caps
                .iter()
                .filter_map(|c| c["offset"].as_u64())
                .filter(|&o| o as usize <= pos)
                .max()
                .unwrap_or(pos as u64) as usize;
            out.push(Group {
                start: pos,
                len: end - pos,
                label: format!("{}+{:#04x}", p.owner, pos - cap_start),
            });
        }
        pos = end;
    }
    out
}

fn row_shown(view: &View, at: usize) -> bool {
    let end = (at + 16).min(view.size);
    at < 0x100
        || view.guest[at..end]
            .iter()
            .chain(&view.physical[at..end])
            .any(|&b| b != 0)
}

fn print_text(view: &View) {
    let t = &view.target;
    println!("{}  {}  vfio-pci", t.bdf, t.description);
    println!(
        "config space {} bytes; capabilities: {}",
        view.size,
        if view.cap_text.is_empty() {
            "none".to_string()
        } else {
            view.cap_text.join(", ")
        }
    );
    println!("{LEGEND}");
    println!("all-zero rows of the extended space are not shown");
    println!();
    println!(
        "offset  guest-visible (* = differs from physical)        physical                                          access"
    );
    let all_groups = groups(view, &view.caps);
    for at in (0..view.size).step_by(16) {
        if !row_shown(view, at) {
            continue;
        }
        let end = (at + 16).min(view.size);
        let g = &view.guest[at..end];
        let p = &view.physical[at..end];
        let (cells, phys) = compare_row(g, p);
        let classes: String = view.perms[at..end].iter().map(class).collect();
        println!("{at:#05x}  {cells}   {phys}   {classes}");
        for grp in all_groups.iter().filter(|g| g.start >= at && g.start < end) {
            println!("        {}", annotate(view, grp));
        }
    }
}

fn annotate(view: &View, g: &Group) -> String {
    let range = g.start..g.start + g.len;
    let p = &view.perms[g.start];
    if g.label == "raw" {
        return format!(
            "{:#05x}..{:#05x} raw: reads and writes go to hardware unfiltered",
            g.start,
            g.start + g.len
        );
    }
    let digits = 2 * g.len.min(4);
    let virt = le(view.perms[range.clone()].iter().map(|p| p.virt));
    let write = le(view.perms[range.clone()].iter().map(|p| p.write));
    let guest = le(view.guest[range.clone()].iter().copied());
    let phys = le(view.physical[range].iter().copied());
    let diff = if guest == phys {
        String::new()
    } else {
        format!("  (physical {phys:#0w$x})", w = digits + 2)
    };
    let raw_write = if p.raw_write {
        "  writes raw to hardware"
    } else {
        ""
    };
    format!(
        "{:#05x} {:<18} {:<12} virt {virt:#0w$x} write {write:#0w$x}  = {guest:#0w$x}{diff}{raw_write}",
        g.start,
        g.label,
        p.owner,
        w = digits + 2
    )
}

fn to_json(view: &View) -> Value {
    let rows: Vec<Value> = (0..view.size)
        .step_by(16)
        .filter(|&at| row_shown(view, at))
        .map(|at| {
            let end = (at + 16).min(view.size);
            json!({
                "offset": at,
                "guest": hex(&view.guest[at..end]),
                "physical": hex(&view.physical[at..end]),
                "differs": view.guest[at..end] != view.physical[at..end],
                "access": view.perms[at..end].iter().map(class).collect::<String>(),
            })
        })
        .collect();
    let bytes: Vec<Value> = view
        .perms
        .iter()
        .enumerate()
        .map(|(pos, p)| {
            json!({
                "offset": pos,
                "guest": view.guest[pos],
                "physical": view.physical[pos],
                "owner": p.owner,
                "virt": p.virt,
                "write": p.write,
                "raw": p.raw,
                "raw_write": p.raw_write,
            })
        })
        .collect();
    json!({
        "result": "ok",
        "device": view.target.bdf.to_string(),
        "description": view.target.description,
        "size": view.size,
        "capabilities": view.caps,
        "rows": rows,
        "bytes": bytes,
    })
}
