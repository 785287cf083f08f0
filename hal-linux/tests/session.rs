// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vfio session` end to end: the built-in machine, every assignable corpus image, and
//! images that must be refused with a message naming the problem (never a panic or hang).

use std::path::{Path, PathBuf};
use std::process::Command;

fn vfio() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vfio"))
}

fn devices() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../platforms/sim/devices")
}

/// `(file, header_type, length)` for every image of the bundled corpus index.
fn corpus() -> Vec<(String, u64, u64)> {
    let index = std::fs::read_to_string(devices().join("index.toml")).expect("index.toml");
    let mut out = Vec::new();
    let (mut file, mut header) = (None, None);
    for line in index.lines() {
        if let Some(v) = line.strip_prefix("file = ") {
            file = Some(v.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("header_type = ") {
            header = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("length = ") {
            if let (Some(f), Some(h), Ok(len)) = (file.take(), header.take(), v.parse()) {
                out.push((f, h, len));
            }
        }
    }
    assert!(
        out.len() >= 90,
        "corpus index parsed to {} entries",
        out.len()
    );
    out
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = vfio().args(args).output().expect("run vfio");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn built_in_session_completes_every_step() {
    let (ok, stdout, stderr) = run(&["session"]);
    assert!(ok, "session failed: {stderr}\n{stdout}");
    for needle in [
        "/dev/vfio/2: NOT viable",
        "GET_STATUS 0x1 -> SET_CONTAINER -> 0x3",
        "MSIX_MAPPABLE",
        "FAULT (DMA write fault",
        "eventfd",
        "VFIO_DEVICE_RESET: function reset done",
        "the line is automasked; a second interrupt is not taken",
        "UNMASK while the device still asserts",
        "device raised MSI vector 0",
        "added while enabled (dynamic MSI-X)",
        "VFIO_DEVICE_PCI_HOT_RESET with the group file as ownership proof: bus reset done",
        "no locked or pinned pages, no IOMMU domain, no DMA claim left",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn json_output_is_one_document_with_every_step_ok() {
    let (ok, stdout, _) = run(&["session", "--json"]);
    assert!(ok);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(doc["result"], "ok");
    let steps = doc["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 15);
    assert!(steps.iter().all(|s| s["status"] == "ok"));
    assert_eq!(doc["summary"]["dma_faults_recorded"], 2);
    assert!(doc["summary"]["interrupts_delivered"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn every_type0_corpus_image_of_256_bytes_or_more_is_assigned() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (file, header, len) in corpus() {
        if header != 0 || len < 256 {
            continue;
        }
        count += 1;
        let path = devices().join(&file);
        let (ok, stdout, stderr) = run(&["session", "--json", "--image", path.to_str().unwrap()]);
        if !ok {
            failures.push(format!("{file}: {stderr}"));
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
        if doc["result"] != "ok" {
            failures.push(format!("{file}: {}", doc["error"]));
        }
    }
    assert!(count >= 60, "only {count} type-0 images");
    assert!(
        failures.is_empty(),
        "{} of {count} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bridges_and_short_images_are_refused_with_a_reason() {
    for (file, header, len) in corpus() {
        if header == 0 && len >= 256 {
            continue;
        }
        let path = devices().join(&file);
        let (ok, _, stderr) = run(&["session", "--image", path.to_str().unwrap()]);
        assert!(!ok, "{file} was accepted");
        let reason = match header {
            1 => "PCI-to-PCI bridge",
            2 => "CardBus bridge",
            _ => "truncated",
        };
        assert!(stderr.contains(reason), "{file}: {stderr}");
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
    }
}

#[test]
fn hostile_images_fail_cleanly_naming_the_problem() {
    let nvme = std::fs::read(devices().join("1344-5407-micron-3400-nvme.bin")).unwrap();
    let patched = |edits: &[(usize, u8)]| {
        let mut b = nvme.clone();
        for &(at, v) in edits {
            b[at] = v;
        }
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            nvme[..100].to_vec(),
            "truncated config-space image: 100 bytes",
        ),
        ("empty", Vec::new(), "empty config-space image"),
        ("all-ones", vec![0xff; 256], "vendor ID 0xffff"),
        ("all-ones-4k", vec![0xff; 4096], "vendor ID 0xffff"),
        (
            "loop-self",
            patched(&[(0x41, 0x40)]),
            "standard capability chain loops",
        ),
        (
            "loop-back",
            patched(&[(0x61, 0x40)]),
            "standard capability chain loops",
        ),
        (
            "pointer-into-header",
            patched(&[(0x34, 0x10)]),
            "points outside the capability area",
        ),
        (
            "extended-loop",
            patched(&[(0x102, 0x01), (0x103, 0x10)]),
            "extended capability chain loops",
        ),
        ("bridge", patched(&[(0x0e, 0x01)]), "PCI-to-PCI bridge"),
        (
            "too-long",
            [nvme.as_slice(), nvme.as_slice()].concat(),
            "longer than the 4096-byte extended config space",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("vfio-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, reason) in cases {
        let path = dir.join(format!("{name}.bin"));
        std::fs::write(&path, bytes).unwrap();
        let (ok, _, stderr) = run(&["session", "--image", path.to_str().unwrap()]);
        assert!(!ok, "{name} was accepted");
        assert!(
            stderr.contains(reason),
            "{name}: expected {reason:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    // An endless file is refused after 4097 bytes, not read until memory runs out.
    if std::path::Path::new("/dev/zero").exists() {
        let (ok, _, stderr) = run(&["session", "--image", "/dev/zero"]);
        assert!(!ok, "/dev/zero was accepted");
        assert!(
            stderr.contains("longer than the 4096-byte extended config space"),
            "/dev/zero: {stderr}"
        );
    }
}
