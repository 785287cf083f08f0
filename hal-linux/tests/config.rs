// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vfio config`: the guest-visible config space beside the physical one, with owners and
//! permissions, in text and JSON; refusals of functions vfio-pci cannot show.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn devices() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../platforms/sim/devices")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vfio"))
        .arg("config")
        .args(args)
        .output()
        .expect("run vfio");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, stdout, stderr) = run(&all);
    assert!(ok, "vfio config {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).expect("one JSON document")
}

fn byte(doc: &Value, pos: usize) -> &Value {
    let b = &doc["bytes"][pos];
    assert_eq!(b["offset"], pos);
    b
}

#[test]
fn text_names_capabilities_owners_and_permissions() {
    // The Micron NVMe of the built-in machine.
    let (ok, out, err) = run(&["0000:03:00.0"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("0000:03:00.0"), "{out}");
    for needle in [
        "capabilities: PM@0x40+8, MSI-X@0x50+12, PCIe@0x60+52, AER@0x100+44",
        "0x004 Command            header       virt 0x0400 write 0xffff",
        "MSI-X+0x00         MSI-X",
        "PCIe+0x08          PCIe         virt 0x0000f0e0 write 0x0000fdff",
        "raw: reads and writes go to hardware unfiltered",
        // The AER header's next pointer is patched around the hidden capability.
        "AER+0x00           AER          virt 0xffffffff write 0x00000000  = 0x2d010001  (physical 0x2a010001)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Rows: offset, guest bytes with differences marked, physical bytes, access classes.
    let row = out
        .lines()
        .find(|l| l.starts_with("0x100 "))
        .expect("row 0x100");
    assert!(row.contains("01 00 01*2d"), "{row}");
    assert!(row.contains("01 00 01 2a"), "{row}");
    assert!(row.ends_with("vvvvmmwmmmwmmmwm"), "{row}");
    // All-zero extended rows are skipped.
    assert!(!out.lines().any(|l| l.starts_with("0xff0 ")), "{out}");
}

#[test]
fn json_describes_every_byte() {
    let doc = json(&["0000:03:00.0"]);
    assert_eq!(doc["result"], "ok");
    let bytes = doc["bytes"].as_array().expect("bytes");
    assert_eq!(bytes.len(), 4096);
    let b = byte(&doc, 0);
    assert_eq!(b["owner"], "header");
    assert_eq!(
        (b["virt"].as_u64(), b["write"].as_u64()),
        (Some(0xFF), Some(0))
    );
    assert_eq!(byte(&doc, 0x50)["owner"], "MSI-X");
    assert_eq!(byte(&doc, 0x68)["owner"], "PCIe");
    assert_eq!(byte(&doc, 0x68)["virt"], 0xE0);
    assert_eq!(byte(&doc, 0x104)["owner"], "AER");
    let raw = byte(&doc, 0x5C);
    assert_eq!(
        (raw["owner"].as_str(), raw["raw"].as_bool()),
        (Some("raw"), Some(true))
    );
    // The guest sees the patched next pointer; hardware keeps its own.
    assert_eq!(byte(&doc, 0x103)["guest"], 0x2D);
    assert_eq!(byte(&doc, 0x103)["physical"], 0x2A);
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows[0]["offset"], 0);
    assert!(rows
        .iter()
        .any(|r| r["offset"] == 0x100 && r["differs"] == true));
    let bytes: Vec<&str> = rows[0]["guest"].as_str().unwrap().split(' ').collect();
    assert_eq!(bytes.len(), 16);
}

#[test]
fn any_vfio_pci_function_of_the_machine_and_images() {
    let doc = json(&["0000:02:00.0"]);
    assert_eq!(doc["device"], "0000:02:00.0");
    let names: Vec<&str> = doc["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"MSI") && names.contains(&"Vendor"),
        "{names:?}"
    );
    // The standard vendor-specific capability is read virtual in its header, written raw.
    let vendor = doc["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "Vendor")
        .unwrap()["offset"]
        .as_u64()
        .unwrap() as usize;
    let next = byte(&doc, vendor + 1);
    assert_eq!(
        (next["virt"].as_u64(), next["raw_write"].as_bool()),
        (Some(0xFF), Some(true))
    );
    let image = devices().join("1000-0072-sas2008.bin");
    let doc = json(&["--image", image.to_str().unwrap()]);
    assert_eq!(doc["bytes"].as_array().unwrap().len(), 4096);
    let image = devices().join("8086-1229-82557-e100.bin");
    let doc = json(&["--image", image.to_str().unwrap()]);
    assert_eq!(doc["bytes"].as_array().unwrap().len(), 256);
    assert_eq!(byte(&doc, 0)["owner"], "header");
}

#[test]
fn refusals_name_the_reason() {
    let bridge = devices().join("8086-244e-82801-pci-bridge.bin");
    let (ok, _, err) = run(&["--image", bridge.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("header type 1 (PCI-to-PCI bridge) cannot be assigned"),
        "{err}"
    );
    let (ok, out, err) = run(&["--image", bridge.to_str().unwrap(), "--json"]);
    assert!(!ok);
    let doc: Value = serde_json::from_str(&out).expect("JSON even on failure");
    assert_eq!(doc["result"], "failed");
    assert!(err.contains("bridge"), "{err}");
    let (ok, _, err) = run(&["0000:02:00.1"]);
    assert!(!ok);
    assert!(err.contains("host driver snd_hda_intel"), "{err}");
    let (ok, _, err) = run(&["0000:07:00.0"]);
    assert!(!ok);
    assert!(err.contains("no function at 0000:07:00.0"), "{err}");
}

#[test]
fn default_device_is_the_session_device() {
    let (ok, out, err) = run(&[]);
    assert!(ok, "{err}");
    assert!(out.starts_with("0000:01:00.0  LSI SAS2008"), "{out}");
    assert!(out.contains("MSI@0xa8+14"), "{out}");
}
