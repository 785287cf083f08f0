//! Replay of the oracle's vfio-pci device files (`devices/*.json`, schema
//! `vfio-kernel-oracle/device/1`) against the vfio-pci driver.
//!
//! The device is a [`MockPci`] built from the file's physical config after open
//! (`phys_config_after_open`) and the BAR/ROM resources of `sysfs.resource`. Replayed and
//! compared, one check per value: `device_info`, `regions`, `irqs` (info only),
//! `config_reads_initial` (every access at widths 1/2/4), `config_writes` in order
//! (`before`, write result, `after`, `vfio_dwords`, `phys_dwords`), `config_raw_accesses`
//! (results, read data, `vfio_after`/`phys_after`), and `region_access` results.
//!
//! Hardware model (not the core's behaviour): the emulated device's own write masks are
//! taken from the file. Before each write, every physical bit that the oracle shows
//! unchanged across the write is locked in the mock (the QEMU device ignored writes to
//! it); after the write, physical dwords are compared and then re-synchronised to the
//! file's values (live register state). The ROM reads `ENOMEM` while the device cannot
//! decode memory on 7.3 (QEMU 10; ERRATA 6), and its valid image is modelled as the first
//! half of the resource. A secondary-bus reset counts as a function reset only when the
//! function is alone in its group.
//!
//! Interrupts and device ioctls: `set_irqs` (every step's result through the generic
//! `SET_IRQS` validator and the driver, eventfd counters, the MSI/MSI-X control words of
//! the `state` snapshots as seen through vfio), `msix_dynamic` (results, GET_IRQ_INFO,
//! eventfd counters, `vfio_ctrl`/`phys_ctrl`) and `misc_ioctls` (hot-reset info and hot
//! reset with group-fd proof, DEVICE_RESET, unknown ioctls, DEVICE_FEATURE through the
//! core's generic checks and the driver, IOEVENTFD on BAR0 with one eventfd, "past BAR
//! end" being the last 2 bytes of BAR0 with size 4) and `device_feature_queries` (every
//! feature request, the `power state` snapshots against the driver's low-power request —
//! D3hot only for functions with a PM capability —, config reads in low power, the wakeup
//! eventfd counter, a fresh wakeup eventfd per entry). `set_irqs` and
//! `msix_dynamic` run on freshly opened devices (the oracle ran them on a fresh open and
//! after a reopen). Hardware model for hot reset: a bus reset is possible off the root
//! bus; the affected functions are the `group_devices` on the device's bus; the platform
//! refuses the reset itself (`ENOTTY`) for functions that have a function-level reset
//! method (`flr`/`pm` in `reset_method`: e1000e, nvme, virtio-net), as observed (ERRATA
//! "Observations"). Descriptors: every fd named in an eventfd array is an eventfd except
//! the "bad fd" (not open) and "/dev/null" (not an eventfd) ones; each step that names
//! an fd gets a fresh eventfd (counter 0). The files record at most 16 descriptors of an
//! array; a longer array of consecutive descriptors is continued in sequence.
//!
//! Two paths (see [`replay_sections`]): every file is replayed through the dispatcher
//! (`Vfio::ioctl` with the uapi structs and argsz protocol, `Vfio::device_read` /
//! `device_write` on a device file from `GROUP_GET_DEVICE_FD`) and through the typed API;
//! one check per file requires both to produce the same (passed, failed) totals.
//!
//! Not replayed (listed in the output, not counted): DMA_BUF (feature 11) on 7.3 (dma-buf
//! export is not implemented), registry-level cases of `misc_ioctls`, open/close
//! snapshots, mmap.

use std::path::Path;

use serde_json::Value;
use vfio_core::pci::{PciDevice, PciDriver};
use vfio_core::platform::{AffectedFunction, BarKind, BarResource, Bdf, ResetMethod};
use vfio_core::uapi::{self, ioctl, irq_set_flags};
use vfio_core::vfio::{BusDriver, FdResolver, FdTarget};
use vfio_core::{Era, Errno};

use super::device_path::{session, DevPath};
use super::Tally;
use crate::pci_mock::{MockEvents, MockFd, MockPci, MockRom, MOCK_BDF};

pub(crate) type Driver = PciDriver<MockPci, MockEvents>;

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

/// Hex bytes in memory order; `??` (a byte that did not come back) is `None`.
fn bytes(s: &str) -> Vec<Option<u8>> {
    s.as_bytes()
        .chunks(2)
        .map(|c| {
            std::str::from_utf8(c)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `Ok(bytes)` / `Err(errno name)` of a syscall result as the oracle records it.
fn outcome(v: &Value) -> Result<i64, String> {
    let ret = v.get("ret").and_then(Value::as_i64).unwrap_or(0);
    if ret < 0 {
        Err(v
            .get("errno")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string())
    } else {
        Ok(ret)
    }
}

fn ours<T>(r: &Result<T, Errno>, ok: impl Fn(&T) -> i64) -> Result<i64, String> {
    match r {
        Ok(v) => Ok(ok(v)),
        Err(e) => Err(e.name().to_string()),
    }
}

fn build(doc: &Value, era: Era) -> Result<Driver, String> {
    let phys = doc
        .get("phys_config_after_open")
        .and_then(Value::as_str)
        .ok_or("no phys_config_after_open")?;
    let size = doc
        .pointer("/config_reads_initial/size")
        .and_then(num)
        .unwrap_or(256) as u16;
    let mut m = MockPci::blank(size);
    for (i, b) in bytes(phys).into_iter().enumerate().take(4096) {
        m.cfg[i] = b.unwrap_or(0xFF);
    }
    let res = doc
        .pointer("/sysfs/resource")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, line) in res.iter().enumerate().take(7) {
        let f: Vec<u64> = line
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|t| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok())
            .collect();
        let [start, end, flags] = f[..] else { continue };
        if end == 0 {
            continue;
        }
        let size = end - start + 1;
        if i == 6 {
            // Hardware model: QEMU's option ROM images are smaller than the resource; the
            // 6.1 files show reads near the resource end succeed ungated (0xFF fill).
            m.rom = MockRom::Resource {
                size,
                image: size / 2,
            };
            continue;
        }
        let kind = if flags & 0x100 != 0 {
            BarKind::Io
        } else if flags & 0x0010_0000 != 0 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        m.bars[i] = BarResource {
            kind,
            prefetch: flags & 0x2000 != 0,
            start,
            size,
        };
    }
    let reset = doc
        .pointer("/sysfs/reset_method")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Hardware model: a secondary-bus reset works as a function reset only when the
    // function is alone behind its bridge (one device in its group); rtl8139/e1000 share
    // theirs.
    let alone = doc
        .pointer("/sysfs/group_devices")
        .and_then(Value::as_array)
        .is_none_or(|g| g.len() <= 1);
    m.reset_function = reset.split_whitespace().any(|r| r != "bus" || alone);
    m.rom_unreadable_when_off = era == Era::Linux7_3;
    Ok(PciDriver::new(m, MockEvents::default()).with_era(era))
}

/// The open-time effects the file already shows (decode enable, reset) are in
/// `phys_config_after_open`: resynchronise the mock after the open.
fn resync(doc: &Value, driver: &mut Driver) {
    let phys = doc
        .get("phys_config_after_open")
        .and_then(Value::as_str)
        .unwrap_or("");
    for (i, b) in bytes(phys).into_iter().enumerate().take(4096) {
        driver.access_mut().cfg[i] = b.unwrap_or(0xFF);
    }
}

/// Builds the file's function and opens it through one path (`typed`: the driver
/// directly, else the dispatcher), then runs `f` on that path.
fn with_path<R>(
    doc: &Value,
    era: Era,
    typed: bool,
    f: impl FnOnce(&mut dyn DevPath) -> R,
) -> Result<R, String> {
    let driver = build(doc, era)?;
    session(doc, driver, typed, |d| resync(doc, d), f)
}

const CFG: u64 = 7 << 40;

/// Locks every physical bit of the dwords at `off` that the oracle's `target` shows
/// equal to the mock's current value (the emulated device kept them).
fn lock_from(driver: &mut Driver, off: usize, target: &[Option<u8>]) {
    let m = driver.access_mut();
    m.hw_ro.clear();
    for (i, t) in target.iter().enumerate() {
        let at = off + i;
        let cur = m.cfg.get(at).copied().unwrap_or(0);
        let mask = match t {
            Some(t) => !(cur ^ t),
            None => 0xFF,
        };
        if mask != 0 {
            m.hw_ro.push((at as u16, 1, u32::from(mask)));
        }
    }
}

fn sync_to(driver: &mut Driver, off: usize, target: &[Option<u8>]) {
    let m = driver.access_mut();
    m.hw_ro.clear();
    for (i, t) in target.iter().enumerate() {
        if let (Some(t), Some(b)) = (t, m.cfg.get_mut(off + i)) {
            *b = *t;
        }
    }
}

fn cmp_bytes(t: &mut Tally, ctx: &str, what: &str, want: &[Option<u8>], got: &[u8]) {
    let w: Vec<Option<u8>> = want.to_vec();
    let g: Vec<Option<u8>> = got
        .iter()
        .zip(want.iter())
        .map(|(g, w)| w.map(|_| *g))
        .chain(std::iter::repeat_n(
            None,
            want.len().saturating_sub(got.len()),
        ))
        .collect();
    if want.len() > got.len() {
        t.check(ctx, what, hex_opt(&w), hexs(got));
    } else {
        t.check(ctx, what, hex_opt(&w), hex_opt(&g));
    }
}

fn hex_opt(b: &[Option<u8>]) -> String {
    b.iter()
        .map(|x| x.map_or("??".to_string(), |v| format!("{v:02x}")))
        .collect()
}

/// The physical bytes an oracle record shows after a write (`phys`: `{offset, data}`;
/// `default_off` where it names no offset): `(offset, bytes)`.
fn phys_target(phys: Option<&Value>, default_off: u64) -> (usize, Vec<Option<u8>>) {
    let poff = phys
        .and_then(|p| p.get("offset"))
        .and_then(num)
        .unwrap_or(default_off) as usize;
    let ptarget = phys
        .and_then(|p| p.get("data"))
        .and_then(Value::as_str)
        .map(bytes)
        .unwrap_or_default();
    (poff, ptarget)
}

/// Compares the mock's physical bytes at `off` with `target` (as `what`), then
/// resynchronises them to it.
fn check_phys(
    t: &mut Tally,
    ctx: &str,
    what: &str,
    driver: &mut Driver,
    off: usize,
    target: &[Option<u8>],
) {
    let now: Vec<u8> = (0..target.len())
        .map(|i| driver.access().cfg.get(off + i).copied().unwrap_or(0))
        .collect();
    cmp_bytes(t, ctx, what, target, &now);
    sync_to(driver, off, target);
}

/// Checks a read against an oracle record: its result and, where the record has
/// them, its bytes (`prefix` names the checks: `"{prefix}result"`, `"{prefix}data"`).
fn check_read(t: &mut Tally, ctx: &str, prefix: &str, want: &Value, got: &Result<Vec<u8>, Errno>) {
    let result = format!("{prefix}result");
    t.check(ctx, &result, outcome(want), ours(got, |v| v.len() as i64));
    if let (Some(d), Ok(g)) = (want.get("data").and_then(Value::as_str), got) {
        cmp_bytes(t, ctx, &format!("{prefix}data"), &bytes(d), g);
    }
}

/// `GET_IRQ_INFO` of `index` against an oracle record `{result, flags, count}`.
fn check_irq_info(t: &mut Tally, ctx: &str, want: &Value, d: &mut dyn DevPath, index: u32) {
    let got = d.irq_info(index);
    t.check(ctx, "result", outcome(want).map(|_| 0), ours(&got, |_| 0));
    if let Ok((flags, count)) = got {
        t.check(
            ctx,
            "flags",
            want.get("flags").and_then(num),
            Some(u64::from(flags)),
        );
        t.check(
            ctx,
            "count",
            want.get("count").and_then(num),
            Some(u64::from(count)),
        );
    }
}

fn replay_base(name: &str, doc: &Value, d: &mut dyn DevPath) -> Tally {
    let mut t = Tally::default();
    let empty = Vec::new();
    let arr = |k: &str| {
        doc.get(k)
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone()
    };

    // device_info
    if let Some(info) = doc.get("device_info") {
        let r = d.device_info();
        let ctx = format!("{name} device_info");
        if let Ok((flags, num_regions, num_irqs)) = r {
            t.check(
                &ctx,
                "flags",
                info.get("flags").and_then(num),
                Some(u64::from(flags)),
            );
            t.check(
                &ctx,
                "num_regions",
                info.get("num_regions").and_then(num),
                Some(u64::from(num_regions)),
            );
            t.check(
                &ctx,
                "num_irqs",
                info.get("num_irqs").and_then(num),
                Some(u64::from(num_irqs)),
            );
        }
    }
    // regions
    for r in arr("regions") {
        let index = r.get("index").and_then(num).unwrap_or(0) as u32;
        let ctx = format!("{name} regions[{index}]");
        let got = d.region_info(index);
        t.check(&ctx, "result", outcome(&r).map(|_| 0), ours(&got, |_| 0));
        if let Ok(i) = got {
            let flags = u64::from(i.flags);
            t.check(&ctx, "flags", r.get("flags").and_then(num), Some(flags));
            t.check(&ctx, "size", r.get("size").and_then(num), Some(i.size));
            t.check(
                &ctx,
                "offset",
                r.get("offset").and_then(num),
                Some(i.offset),
            );
            t.check(
                &ctx,
                "argsz_out",
                r.get("argsz_out").and_then(num),
                Some(i.argsz_out),
            );
        }
    }
    // irqs (GET_IRQ_INFO only)
    for r in arr("irqs") {
        let index = r.get("index").and_then(num).unwrap_or(0) as u32;
        let ctx = format!("{name} irqs[{index}]");
        check_irq_info(&mut t, &ctx, &r, d, index);
    }
    // config_reads_initial
    if let Some(reads) = doc.get("config_reads_initial") {
        let size = reads.get("size").and_then(num).unwrap_or(256) as usize;
        for (key, w) in [("w1", 1usize), ("w2", 2), ("w4", 4)] {
            let Some(want) = reads.get(key).and_then(Value::as_str).map(bytes) else {
                continue;
            };
            let mut off = 0;
            while off + w <= size.min(want.len()) {
                let got = d.read(CFG + off as u64, w).unwrap_or_default();
                let exp = &want[off..off + w];
                if exp.iter().any(Option::is_some) {
                    cmp_bytes(
                        &mut t,
                        &format!("{name} config_reads_initial {key}@{off:#x}"),
                        "data",
                        exp,
                        &got,
                    );
                }
                off += w;
            }
        }
    }
    // config_writes
    for wr in arr("config_writes") {
        let label = wr.get("name").and_then(Value::as_str).unwrap_or("?");
        let ctx = format!("{name} config_writes \"{label}\"");
        let off = wr.get("offset").and_then(num).unwrap_or(0);
        let width = wr.get("width").and_then(num).unwrap_or(4) as usize;
        let value = wr.get("value").and_then(num).unwrap_or(0);
        if let Some(b) = wr.get("before") {
            let got = d.read(CFG + off, width);
            check_read(&mut t, &ctx, "before ", b, &got);
        }
        let (poff, ptarget) = phys_target(wr.get("phys_dwords"), off & !3);
        lock_from(d.driver(), poff, &ptarget);
        let data = value.to_le_bytes();
        let got = d.write(CFG + off, &data[..width.min(8)]);
        if let Some(w) = wr.get("write") {
            t.check(&ctx, "write result", outcome(w), ours(&got, |n| *n as i64));
        }
        check_phys(&mut t, &ctx, "phys_dwords", d.driver(), poff, &ptarget);
        if let Some(a) = wr.get("after") {
            let got = d.read(CFG + off, width);
            check_read(&mut t, &ctx, "after ", a, &got);
        }
        if let Some(v) = wr.get("vfio_dwords") {
            let voff = v.get("offset").and_then(num).unwrap_or(0);
            if let Some(hex) = v.get("data").and_then(Value::as_str) {
                let want = bytes(hex);
                let got = d.read(CFG + voff, want.len()).unwrap_or_default();
                cmp_bytes(&mut t, &ctx, "vfio_dwords", &want, &got);
            }
        }
    }
    // config_raw_accesses
    for a in arr("config_raw_accesses") {
        let label = a.get("name").and_then(Value::as_str).unwrap_or("?");
        let ctx = format!("{name} config_raw_accesses \"{label}\"");
        let off = a.get("offset").and_then(num).unwrap_or(0);
        let absolute = a.get("absolute").and_then(Value::as_bool).unwrap_or(false);
        let pos = if absolute { off } else { CFG.wrapping_add(off) };
        let count = a.get("count").and_then(num).unwrap_or(0) as usize;
        if label.contains("offset -1") {
            t.exclusions.push(
                "config_raw_accesses \"read 4 offset -1\": a negative pread offset is refused by \
                 the VFS before vfio (no core path)"
                    .into(),
            );
            continue;
        }
        if a.get("op").and_then(Value::as_str) == Some("read") {
            let got = d.read(pos, count);
            check_read(&mut t, &ctx, "", &a, &got);
        } else {
            let fill = a.get("fill").and_then(num).unwrap_or(0) as u8;
            let (poff, ptarget) = phys_target(a.get("phys_after"), 0);
            lock_from(d.driver(), poff, &ptarget);
            let got = d.write(pos, &vec![fill; count]);
            t.check(&ctx, "result", outcome(&a), ours(&got, |n| *n as i64));
            check_phys(&mut t, &ctx, "phys_after", d.driver(), poff, &ptarget);
            if let Some(v) = a.get("vfio_after") {
                let voff = v.get("offset").and_then(num).unwrap_or(0);
                if let Some(hex) = v.get("data").and_then(Value::as_str) {
                    let mut want = bytes(hex);
                    // Bytes past the region end did not come back (`??`): read what did.
                    let known = want.iter().position(Option::is_none).unwrap_or(want.len());
                    want.truncate(known);
                    let got = d.read(CFG + voff, want.len()).unwrap_or_default();
                    cmp_bytes(&mut t, &ctx, "vfio_after", &want, &got);
                }
            }
        }
    }
    // region_access
    for r in arr("region_access") {
        let index = r.get("index").and_then(num).unwrap_or(0);
        let size = r.get("size").and_then(num).unwrap_or(0);
        let Some(obj) = r.as_object() else { continue };
        for (key, v) in obj {
            let ctx = format!("{name} region_access[{index}] {key}");
            let (kind, rest) = if let Some(x) = key.strip_prefix("read") {
                ("read", x)
            } else if let Some(x) = key.strip_prefix("write") {
                ("write", x)
            } else {
                if key.starts_with("mmap") {
                    t.exclusions.push(
                        "region_access mmap_*: the core has no mmap path (mmap belongs to the \
                         hosting layer); not counted"
                            .into(),
                    );
                }
                continue;
            };
            let Some((n, at)) = rest.split_once('@') else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else { continue };
            let at = match at {
                "size" => size,
                "size-4" => size.wrapping_sub(4),
                "size-2" => size.wrapping_sub(2),
                x => x.parse().unwrap_or(0),
            };
            let pos = (index << 40) + at;
            let got = if kind == "read" {
                d.read(pos, n).map(|v| v.len())
            } else {
                d.write(pos, &vec![0u8; n])
            };
            t.check(&ctx, "result", outcome(v), ours(&got, |n| *n as i64));
            if index == 6 && kind == "read" {
                if let (Some(d), Ok(_)) = (v.get("data").and_then(Value::as_str), &got) {
                    let _ = d;
                    t.exclusions.push(
                        "region_access ROM data: the ROM image bytes are not in the file; only \
                         results are compared"
                            .into(),
                    );
                }
            }
        }
    }
    t
}

// ------------------------------------------------------------------ interrupts

fn hexdata(step: &Value) -> Vec<u8> {
    step.get("data")
        .and_then(Value::as_str)
        .map(|d| bytes(d).into_iter().map(|b| b.unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// The descriptors of an eventfd array. The files record at most 16; a longer array of
/// consecutive descriptors is continued in sequence (the probe opened them one by one).
fn step_fds(step: &Value) -> Vec<i32> {
    let n = |k: &str| step.get(k).and_then(num).unwrap_or(0) as u32;
    if n("flags") & irq_set_flags::DATA_EVENTFD == 0 {
        return Vec::new();
    }
    let mut fds: Vec<i32> = hexdata(step)
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let room = (n("argsz").saturating_sub(20) / 4).min(n("count")) as usize;
    let consecutive = fds.len() >= 2 && fds.windows(2).all(|w| w[1] == w[0] + 1);
    while consecutive && fds.len() < room {
        let next = fds[fds.len() - 1] + 1;
        fds.push(next);
    }
    fds
}

/// Opens the descriptors the steps name (see the module documentation).
fn open_fds(driver: &mut Driver, steps: &[Value]) {
    for st in steps {
        let label = st.get("case").and_then(Value::as_str).unwrap_or("");
        for fd in step_fds(st) {
            if fd < 0 || label.contains("bad fd") {
                continue;
            }
            let kind = if label.contains("/dev/null") {
                MockFd::Other
            } else {
                MockFd::Event
            };
            driver.events_mut().fds.entry(fd).or_insert(kind);
        }
    }
}

/// One SET_IRQS step through `path`: header and payload (the eventfd array continued as
/// [`step_fds`] describes).
fn set_irqs(path: &mut dyn DevPath, step: &Value) -> Result<i64, Errno> {
    let n = |k: &str| step.get(k).and_then(num).unwrap_or(0) as u32;
    let hdr = uapi::IrqSet {
        argsz: n("argsz"),
        flags: n("flags"),
        index: n("index"),
        start: n("start"),
        count: n("count"),
    };
    let fds = step_fds(step);
    let data = if fds.len() * 4 > hexdata(step).len() {
        fds.iter().flat_map(|fd| fd.to_le_bytes()).collect()
    } else {
        hexdata(step)
    };
    path.set_irqs(&hdr, &data)
}

/// Replays the SET_IRQS steps of `section` (`set_irqs` or `msix_dynamic`).
fn replay_irqs(
    t: &mut Tally,
    name: &str,
    section: &str,
    doc: &Value,
    era: Era,
    typed: bool,
) -> Result<(), String> {
    let steps = doc
        .get(section)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if steps.is_empty() {
        return Ok(());
    }
    with_path(doc, era, typed, |d| irq_steps(t, name, section, &steps, d))
        .map_err(|e| format!("{name}: {e}"))
}

fn irq_steps(t: &mut Tally, name: &str, section: &str, steps: &[Value], d: &mut dyn DevPath) {
    open_fds(d.driver(), steps);
    let signals = d.driver().events().signals.clone();
    let mut last_fd: Option<i32> = None;
    for (i, st) in steps.iter().enumerate() {
        let label = st.get("case").and_then(Value::as_str).unwrap_or("?");
        let ctx = format!("{name} {section}[{i}] \"{label}\"");
        if st.get("argsz").is_some() {
            let fds = step_fds(st);
            for fd in &fds {
                signals.borrow_mut().remove(fd);
            }
            let got = set_irqs(d, st);
            if got.is_ok() && !fds.is_empty() {
                if let Some(fd) = fds.iter().copied().find(|fd| *fd >= 0) {
                    last_fd = Some(fd);
                }
            }
            t.check(&ctx, "result", outcome(st), ours(&got, |v| *v));
        } else if let Some(e) = st.get("eventfd") {
            let want = if outcome(e).is_ok() {
                e.get("count").and_then(num).unwrap_or(0)
            } else {
                0
            };
            let got = last_fd
                .and_then(|fd| signals.borrow_mut().remove(&fd))
                .unwrap_or(0);
            t.check(&ctx, "eventfd count", want, u64::from(got));
        } else if st.get("index").is_some() && st.get("flags").is_some() {
            // GET_IRQ_INFO.
            let index = st.get("index").and_then(num).unwrap_or(0) as u32;
            check_irq_info(t, &ctx, st, d, index);
        } else if let Some(cap) = st.get("cap_offset").and_then(num) {
            // msix_dynamic state: the control word through vfio and in hardware.
            let got = d.read(CFG + cap + 2, 2).unwrap_or_default();
            let got = got
                .first()
                .map(|lo| u64::from(*lo) | u64::from(got[1]) << 8);
            t.check(&ctx, "vfio_ctrl", st.get("vfio_ctrl").and_then(num), got);
            let m = &d.driver().access().cfg;
            let phys = m
                .get(cap as usize + 2..cap as usize + 4)
                .map(|b| u64::from(b[0]) | u64::from(b[1]) << 8);
            t.check(&ctx, "phys_ctrl", st.get("phys_ctrl").and_then(num), phys);
        } else if let Some(snap) = st.get("s") {
            // set_irqs state: MSI / MSI-X control words of the vfio view.
            let Some(want) = snap.get("vfio_cfg256").and_then(Value::as_str).map(bytes) else {
                continue;
            };
            let w = |at: usize| want.get(at).copied().flatten().unwrap_or(0);
            let mut pos = usize::from(w(0x34) & 0xFC);
            let mut ttl = 48;
            while (0x40..0xFF).contains(&pos) && ttl > 0 {
                let id = w(pos);
                if id == 0x05 || id == 0x11 {
                    let exp = &want[pos + 2..pos + 4];
                    let got = d.read(CFG + pos as u64 + 2, 2).unwrap_or_default();
                    cmp_bytes(t, &ctx, &format!("vfio cap {id:#04x} control"), exp, &got);
                }
                pos = usize::from(w(pos + 1) & 0xFC);
                ttl -= 1;
            }
        }
    }
}

// ------------------------------------------------------------------ misc ioctls

const GROUP_FD: i32 = 1000;
const DEVICE_FD: i32 = 1001;

/// The caller's files in the oracle run: its own group and its device.
struct ReplayFds {
    group: u32,
}

impl FdResolver for ReplayFds {
    fn resolve_fd(&self, fd: i32) -> FdTarget {
        match fd {
            GROUP_FD => FdTarget::Group(self.group),
            DEVICE_FD => FdTarget::Other,
            _ => FdTarget::NotOpen,
        }
    }
}

/// Hot-reset hardware model (module documentation).
fn hot_reset_model(doc: &Value, m: &mut MockPci) -> u32 {
    let group = doc.pointer("/sysfs/iommu_group").and_then(num).unwrap_or(0) as u32;
    let own = doc
        .get("bdf")
        .and_then(Value::as_str)
        .and_then(Bdf::parse)
        .unwrap_or(MOCK_BDF);
    let reset = doc
        .pointer("/sysfs/reset_method")
        .and_then(Value::as_str)
        .unwrap_or("");
    m.hot_reset_scope = (own.bus != 0).then_some(ResetMethod::Bus);
    m.topology = doc
        .pointer("/sysfs/group_devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let bdf = Bdf::parse(d.get("bdf")?.as_str()?)?;
            (bdf.bus == own.bus && bdf.segment == own.segment).then_some(AffectedFunction {
                bdf,
                group: Some(group),
                vfio: d.get("driver").and_then(Value::as_str) == Some("vfio-pci"),
                open: false,
            })
        })
        .collect();
    m.bus_reset_result = reset
        .split_whitespace()
        .any(|r| r == "flr" || r == "pm")
        .then_some(Errno::ENOTTY);
    group
}

fn le32(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 4).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

/// The eventfd the probe registers in its IOEVENTFD cases.
const MISC_EVENTFD: i32 = 900;

/// The `VFIO_DEVICE_FEATURE` buffer a `misc_ioctls` label describes (the 6.1 README, item
/// 12: PROBE of features 0..9, VF token SET on a non-PF, argsz/flag errors).
fn misc_feature(label: &str) -> Option<Vec<u8>> {
    use uapi::feature_flags::{GET, PROBE, SET};
    let rest = label.strip_prefix("DEVICE_FEATURE ")?;
    let (argsz, flags, payload): (u32, u32, usize) = match rest {
        "SET PCI_VF_TOKEN" => (24, SET | uapi::feature::PCI_VF_TOKEN, 16),
        "argsz<minsz" => (4, PROBE | GET, 0),
        "unknown flag bit 20" => (8, PROBE | GET | (1 << 20), 0),
        _ => {
            let (dirs, n) = if let Some(n) = rest.strip_prefix("PROBE|GET|SET feature ") {
                (PROBE | GET | SET, n)
            } else {
                (PROBE | SET, rest.strip_prefix("PROBE|SET feature ")?)
            };
            (8, dirs | n.parse::<u32>().ok()?, 0)
        }
    };
    let mut b = Vec::new();
    b.extend_from_slice(&argsz.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.resize(8 + payload, 0);
    Some(b)
}

/// The `VFIO_DEVICE_IOEVENTFD` buffer a `misc_ioctls` label describes: BAR0 cases with an
/// eventfd, data 0 ("past BAR end": the last 2 bytes of BAR0 with size 4; "config region":
/// region 7).
fn misc_ioeventfd(label: &str, bar0: u64) -> Option<Vec<u8>> {
    use uapi::ioeventfd_flags::{SIZE_16, SIZE_32, SIZE_64};
    let (argsz, flags, offset, fd): (u32, u32, u64, i32) = match label {
        "IOEVENTFD 32 BAR0+0 (probe only, then removed)" => (32, SIZE_32, 0, MISC_EVENTFD),
        "IOEVENTFD remove fd=-1" | "IOEVENTFD remove again fd=-1" => (32, SIZE_32, 0, -1),
        "IOEVENTFD two sizes" => (32, SIZE_32 | SIZE_16, 0, MISC_EVENTFD),
        "IOEVENTFD no size" => (32, 0, 0, MISC_EVENTFD),
        "IOEVENTFD unaligned" => (32, SIZE_32, 2, MISC_EVENTFD),
        "IOEVENTFD config region" => (
            32,
            SIZE_32,
            u64::from(uapi::region_index::CONFIG) << 40,
            MISC_EVENTFD,
        ),
        "IOEVENTFD past BAR end" => (32, SIZE_32, bar0.saturating_sub(2), MISC_EVENTFD),
        "IOEVENTFD 64" => (32, SIZE_64, 0, -1),
        "IOEVENTFD argsz small" => (27, SIZE_32, 0, MISC_EVENTFD),
        _ => return None,
    };
    let mut b = Vec::new();
    b.extend_from_slice(&argsz.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&fd.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    Some(b)
}

fn replay_misc(
    t: &mut Tally,
    name: &str,
    doc: &Value,
    driver: &mut Driver,
    dev: &mut PciDevice<i32>,
) {
    let group = hot_reset_model(doc, driver.access_mut());
    let fds = ReplayFds { group };
    let bar0 = doc.pointer("/regions/0/size").and_then(num).unwrap_or(0);
    let steps = doc
        .get("misc_ioctls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for st in &steps {
        let label = st.get("case").and_then(Value::as_str).unwrap_or("?");
        let ctx = format!("{name} misc_ioctls \"{label}\"");
        let hdr = |argsz: u32, count: u32, fd: Option<i32>| {
            let mut b = Vec::new();
            b.extend_from_slice(&argsz.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            if let Some(fd) = fd {
                b.extend_from_slice(&fd.to_le_bytes());
            }
            b
        };
        let (mut buf, request) = match label {
            l if l.starts_with("GET_PCI_HOT_RESET_INFO") => {
                let argsz = if l.ends_with("4096") { 4096 } else { 12 };
                let mut b = hdr(argsz, 0, None);
                b.resize(argsz as usize, 0);
                (b, ioctl::DEVICE_GET_PCI_HOT_RESET_INFO)
            }
            "PCI_HOT_RESET with own group fd" => {
                (hdr(16, 1, Some(GROUP_FD)), ioctl::DEVICE_PCI_HOT_RESET)
            }
            "PCI_HOT_RESET count=0" => (hdr(12, 0, None), ioctl::DEVICE_PCI_HOT_RESET),
            "PCI_HOT_RESET with device fd instead of group" => {
                (hdr(16, 1, Some(DEVICE_FD)), ioctl::DEVICE_PCI_HOT_RESET)
            }
            "DEVICE_RESET" => {
                let got = driver.reset(dev);
                t.check(&ctx, "result", outcome(st), ours(&got, |_| 0));
                continue;
            }
            l if l.starts_with("unknown ioctl VFIO_BASE+") => {
                let n: u32 = l
                    .trim_start_matches("unknown ioctl VFIO_BASE+")
                    .parse()
                    .unwrap_or(60);
                (Vec::new(), uapi::vfio_io(n))
            }
            l if l.starts_with("DEVICE_FEATURE") => {
                let Some(mut b) = misc_feature(l) else {
                    t.exclusions
                        .push(format!("misc_ioctls \"{l}\": label not understood"));
                    continue;
                };
                let got = vfio_core::vfio::device_feature(driver, dev, &mut b);
                t.check(&ctx, "result", outcome(st), ours(&got, |v| *v));
                continue;
            }
            l if l.starts_with("IOEVENTFD") => {
                driver.events_mut().fds.insert(MISC_EVENTFD, MockFd::Event);
                let Some(b) = misc_ioeventfd(l, bar0) else {
                    t.exclusions
                        .push(format!("misc_ioctls \"{l}\": label not understood"));
                    continue;
                };
                (b, ioctl::DEVICE_IOEVENTFD)
            }
            _ => {
                t.exclusions.push(
                    "misc_ioctls DEVICE_GET_INFO argsz / second GROUP_GET_DEVICE_FD: decided \
                     by the registry (Vfio::ioctl), not the bus driver; covered by the \
                     registry and ABI tests"
                        .into(),
                );
                continue;
            }
        };
        let got = driver.ioctl_with_fds(dev, request, &mut buf, &fds);
        t.check(&ctx, "result", outcome(st), ours(&got, |v| *v));
        if request == ioctl::DEVICE_GET_PCI_HOT_RESET_INFO {
            t.check(
                &ctx,
                "argsz_out",
                st.get("argsz_out").and_then(num),
                Some(le32(&buf, 0)),
            );
            if st.get("count").is_some() {
                t.check(
                    &ctx,
                    "count",
                    st.get("count").and_then(num),
                    Some(le32(&buf, 8)),
                );
                t.check(
                    &ctx,
                    "flags",
                    st.get("flags").and_then(num),
                    Some(le32(&buf, 4)),
                );
            }
            for (k, d) in st
                .get("devices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = 12 + 8 * k;
                let got = (
                    le32(&buf, at),
                    buf.get(at + 6).map(|b| u64::from(*b)),
                    buf.get(at + 7).map(|b| u64::from(*b)),
                );
                let want = (
                    d.get("group_id").and_then(num).unwrap_or(0),
                    d.get("bus").and_then(num),
                    d.get("devfn").and_then(num),
                );
                t.check(&ctx, &format!("devices[{k}]"), want, got);
            }
        }
    }
}

/// The wakeup eventfd of the `device_feature_queries` low-power cases.
const WAKE_EVENTFD: i32 = 901;

fn signals(driver: &Driver) -> u32 {
    driver
        .events()
        .signals
        .borrow()
        .get(&WAKE_EVENTFD)
        .copied()
        .unwrap_or(0)
}

/// `device_feature_queries`: every step with `flags`/`argsz` is sent through the core's
/// `VFIO_DEVICE_FEATURE` path (generic checks, then the driver); `power state` entries
/// are compared with the driver's low-power request (`D3hot`/`suspended` while it
/// stands), the config reads and the wakeup eventfd counter too. DMA_BUF (feature 11) on
/// 7.3 is excluded: dma-buf export is not implemented (the core answers 6.1's `ENOTTY`).
fn replay_features(
    t: &mut Tally,
    name: &str,
    doc: &Value,
    driver: &mut Driver,
    dev: &mut PciDevice<i32>,
    era: Era,
) {
    use vfio_core::pci::LowPower;
    let steps = doc
        .get("device_feature_queries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    driver.events_mut().fds.insert(WAKE_EVENTFD, MockFd::Event);
    let mut consumed = 0u32;
    for st in &steps {
        let label = st.get("case").and_then(Value::as_str).unwrap_or("?");
        let ctx = format!("{name} device_feature_queries \"{label}\"");
        if let (Some(argsz), Some(flags)) =
            (st.get("argsz").and_then(num), st.get("flags").and_then(num))
        {
            let (argsz, flags) = (argsz as u32, flags as u32);
            if flags & uapi::feature_flags::MASK == uapi::feature::DMA_BUF && era != Era::Linux6_1 {
                t.exclusions.push(
                    "device_feature_queries DMA_BUF (feature 11) on 7.3: dma-buf export is \
                     not implemented by the core (it answers ENOTTY, 6.1's answer)"
                        .into(),
                );
                continue;
            }
            let mut b = Vec::new();
            b.extend_from_slice(&argsz.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b.resize(argsz.max(8) as usize, 0);
            if flags & uapi::feature_flags::MASK == uapi::feature::LOW_POWER_ENTRY_WITH_WAKEUP
                && b.len() >= 16
            {
                let fd = if label.contains("fd=-1") {
                    -1
                } else {
                    WAKE_EVENTFD
                };
                b[8..12].copy_from_slice(&fd.to_le_bytes());
                if label.contains("reserved!=0") {
                    b[12..16].copy_from_slice(&1u32.to_le_bytes());
                }
            }
            let wakeup_entry = flags & uapi::feature_flags::MASK
                == uapi::feature::LOW_POWER_ENTRY_WITH_WAKEUP
                && flags & uapi::feature_flags::SET != 0;
            let got = vfio_core::vfio::device_feature(driver, dev, &mut b);
            if wakeup_entry && got.is_ok() {
                // The probe arms a fresh eventfd for each entry: count from here.
                consumed = signals(driver);
            }
            t.check(&ctx, "result", outcome(st), ours(&got, |v| *v));
        } else if label == "power state" {
            // The host's runtime suspend reaches D3hot only through a PM capability
            // (rtl8139 has none and stays in D0 while suspended).
            let low = dev.low_power() != LowPower::Off;
            let has_pm = dev
                .config()
                .capabilities()
                .iter()
                .any(|c| c.space == vfio_core::pci::CapSpace::Standard && c.id == 0x01);
            let d3 = low && has_pm;
            let want = st.get("power_state").and_then(Value::as_str);
            t.check(
                &ctx,
                "power_state",
                want,
                Some(if d3 { "D3hot" } else { "D0" }),
            );
            let want = st.get("runtime_status").and_then(Value::as_str);
            let got = if low { "suspended" } else { "active" };
            t.check(&ctx, "runtime_status", want, Some(got));
        } else if label.starts_with("vfio config read @0") {
            let mut b = [0u8; 4];
            let got = driver.read(dev, CFG, &mut b);
            t.check(&ctx, "result", outcome(st), ours(&got, |n| *n as i64));
            let want = st.get("value").and_then(num);
            t.check(&ctx, "value", want, Some(u64::from(u32::from_le_bytes(b))));
        } else if let Some(ev) = st.get("eventfd") {
            let total = signals(driver);
            let count = total - consumed;
            consumed = total;
            let got = if count == 0 {
                Err("EAGAIN".to_string())
            } else {
                Ok(8)
            };
            t.check(&ctx, "eventfd", outcome(ev), got);
            if count != 0 {
                t.check(
                    &ctx,
                    "count",
                    ev.get("count").and_then(num),
                    Some(u64::from(count)),
                );
            }
        }
        // sysfs power/control writes and the DMA_BUF target note: host facts, not counted.
    }
}

/// Replays a device oracle file section by section: `(section, tally)` for `base`
/// (device info, regions, IRQ info, config space, region access), `set_irqs`,
/// `msix_dynamic`, `misc_ioctls` and `device_feature_queries`.
///
/// Every section runs twice, through the dispatcher (`Vfio::ioctl`,
/// `Vfio::device_read`/`device_write` on a device file from `GROUP_GET_DEVICE_FD`) and
/// through the typed API (the driver's methods called directly): `base`, `set_irqs` and
/// `msix_dynamic` differ between the two paths, `misc_ioctls` and
/// `device_feature_queries` call the driver on both. Each section's tally is the
/// dispatcher's, with the typed path's failures added (`[typed path]`); `base` carries one
/// more check per file: both paths produced identical totals (passed, failed).
///
/// # Errors
/// As [`replay`].
pub fn replay_sections(path: &Path, era: Era) -> Result<Vec<(&'static str, Tally)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().to_string());
    let mut abi = sections_on(&name, &doc, era, false)?;
    let typed = sections_on(&name, &doc, era, true)?;
    let total = |v: &[(&str, Tally)]| {
        v.iter()
            .fold((0, 0), |(p, f), (_, t)| (p + t.passed, f + t.failed))
    };
    let (abi_total, typed_total) = (total(&abi), total(&typed));
    for ((_, a), (_, t)) in abi.iter_mut().zip(typed) {
        a.failed += t.failed;
        a.mismatches.extend(
            t.mismatches
                .into_iter()
                .map(|m| format!("[typed path] {m}")),
        );
    }
    if let Some((_, base)) = abi.first_mut() {
        base.check(
            &name,
            "typed API and dispatcher agree (passed, failed)",
            abi_total,
            typed_total,
        );
    }
    Ok(abi)
}

/// Every section through one path (`typed`: the typed API, else the dispatcher).
fn sections_on(
    name: &str,
    doc: &Value,
    era: Era,
    typed: bool,
) -> Result<Vec<(&'static str, Tally)>, String> {
    let (mut base, misc, features) = with_path(doc, era, typed, |d| {
        let base = replay_base(name, doc, d);
        let mut misc = Tally::default();
        let mut features = Tally::default();
        d.with_typed(&mut |driver, dev| {
            replay_misc(&mut misc, name, doc, driver, dev);
            replay_features(&mut features, name, doc, driver, dev, era);
        });
        (base, misc, features)
    })
    .map_err(|e| format!("{name}: {e}"))?;
    let mut irqs = Tally::default();
    replay_irqs(&mut irqs, name, "set_irqs", doc, era, typed)?;
    let mut dynamic = Tally::default();
    replay_irqs(&mut dynamic, name, "msix_dynamic", doc, era, typed)?;
    base.exclusions.push(
        "open/close snapshots (phys_config_*_close, \
         config_reads_after_reopen): not replayed, not counted"
            .into(),
    );
    Ok(vec![
        ("base", base),
        ("set_irqs", irqs),
        ("msix_dynamic", dynamic),
        ("misc_ioctls", misc),
        ("device_feature_queries", features),
    ])
}

/// Replays a device oracle file against the vfio-pci driver with era `era` (every
/// section of [`replay_sections`], both paths, merged).
///
/// # Errors
/// A message when the file cannot be read or parsed, or the device cannot be opened.
pub fn replay(path: &Path, era: Era) -> Result<Tally, String> {
    let mut t = Tally::default();
    for (_, s) in replay_sections(path, era)? {
        t.merge(s);
    }
    Ok(t)
}
