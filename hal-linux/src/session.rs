// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vfio session`: a complete device assignment, driven through the Linux VFIO ABI the way
//! a VMM drives `/dev/vfio`, on a simulated machine.
//!
//! Every step checks what it did (return values, bytes written back, the simulated
//! hardware's state) and the session stops at the first step that does not behave, with
//! a message naming the step and the problem.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};
use vfio_core::abi::Arg;
use vfio_core::pci::{ConfigSpace, PciDevice, PciDriver};
use vfio_core::platform::{Bdf, MsiKind, PciAccess, Width};
use vfio_core::type1::DmaEntry;
use vfio_core::uapi::{
    self, device_flags, dma_map_flags, dma_unmap_flags, extension, group_flags, ioctl, irq_index,
    irq_set_flags, region_cap, region_index,
};
use vfio_core::vfio::{
    Config, ContainerSlot, DeviceId, DeviceSlot, Fd, FileSlot, GroupSlot, Storage, Vfio,
};
use vfio_core::Errno;
use vfio_sim::{FaultReason, SimEvent, SimEvents, SimIommu, SimMachine, SimMemory, SimPci};

use crate::abi::{caps, decode, ioctl_buffer, le32, le64};
use crate::machine::{self, Placed};
use crate::report::{compare_row, hex, Report};

type Driver = PciDriver<SimPci, SimEvents>;
type Registry<'s> = Vfio<'s, SimIommu, SimMemory, Driver>;
type Outcome<T> = Result<T, String>;
/// What a step produces: its value, JSON details and text lines.
type StepOutput<T> = (T, Value, Vec<String>);

/// Guest RAM the session maps for DMA: process address, IOVA, length.
const GUEST_VADDR: u64 = 0x7f00_0000_0000;
const GUEST_IOVA: u64 = 0x0010_0000;
const GUEST_LEN: u64 = 4 << 20;
/// A read-only page (a guest ROM, say) mapped READ only.
const RO_VADDR: u64 = 0x7f10_0000_0000;
const RO_IOVA: u64 = 0x4000_0000;
/// An IOVA nothing is mapped at.
const UNMAPPED_IOVA: u64 = 0x8000_0000;
/// How many interrupt vectors the session wires up at most.
const MAX_SESSION_VECTORS: u32 = 4;

const REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const IRQ_NAMES: [&str; 5] = ["INTx", "MSI", "MSI-X", "ERR", "REQ"];

fn errno(what: &str) -> impl Fn(Errno) -> String + '_ {
    move |e| format!("{what} failed: {e}")
}

/// Runs the session; prints the report; returns the process exit code (0 success, 1 a
/// step failed or the machine could not be built).
pub fn run(image: Option<&Path>, json_out: bool) -> ExitCode {
    let mut report = Report::new(json_out);
    let built = match image {
        Some(path) => machine::from_image(path),
        None => machine::built_in(),
    };
    let result = built.and_then(|(sim, placed)| Session::run(&sim, &placed, &mut report));
    let ok = result.is_ok();
    if json_out {
        let doc = json!({
            "result": if ok { "ok" } else { "failed" },
            "error": result.as_ref().err(),
            "steps": report.steps(),
            "summary": result.as_ref().ok(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        match &result {
            Ok(summary) => print_summary(summary),
            Err(message) => eprintln!("error: {message}"),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_summary(summary: &Value) {
    println!();
    println!("Summary");
    if let Some(map) = summary.as_object() {
        for (key, value) in map {
            println!("  {key:<24} {value}");
        }
    }
}

struct Session<'a, 's> {
    sim: &'a SimMachine,
    vfio: Registry<'s>,
    report: &'a mut Report,
}

impl<'a, 's> Session<'a, 's> {
    fn run(sim: &SimMachine, placed: &[Placed], report: &mut Report) -> Outcome<Value> {
        let mut files = vec![FileSlot::EMPTY; 64];
        let mut dma = vec![DmaEntry::EMPTY; 2 * 4096];
        let (dma0, dma1) = dma.split_at_mut(4096);
        let mut containers = vec![ContainerSlot::new(dma0), ContainerSlot::new(dma1)];
        let mut groups = vec![GroupSlot::EMPTY; 16];
        let mut devices: Vec<DeviceSlot<PciDevice<SimEvent>>> =
            (0..16).map(|_| DeviceSlot::new()).collect();
        let storage = Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        };
        let driver = PciDriver::new(sim.pci(), sim.events());
        let vfio = Vfio::new(
            sim.iommu(),
            sim.memory(),
            driver,
            storage,
            Config::default(),
        );
        let mut session = Session { sim, vfio, report };
        session.assign(placed)
    }

    fn step_ok(&mut self, title: &str, details: Value, text: Vec<String>) {
        self.report.ok(title, details, &text);
    }

    fn fail<T>(&mut self, title: &str, message: String) -> Outcome<T> {
        self.report.failed(
            title,
            json!({ "error": message }),
            std::slice::from_ref(&message),
        );
        Err(format!("{title}: {message}"))
    }

    /// Runs `body` as step `title`: on error the step is recorded as failed.
    fn step<T>(
        &mut self,
        title: &str,
        body: impl FnOnce(&mut Self) -> Outcome<(T, Value, Vec<String>)>,
    ) -> Outcome<T> {
        match body(self) {
            Ok((value, details, text)) => {
                self.step_ok(title, details, text);
                Ok(value)
            }
            Err(message) => self.fail(title, message),
        }
    }

    fn assign(&mut self, placed: &[Placed]) -> Outcome<Value> {
        let target = placed
            .iter()
            .find(|p| p.assign)
            .cloned()
            .ok_or("the machine has no device to assign")?;
        let dev = self.step("build the simulated machine and bind vfio-pci", |s| {
            s.register(placed, &target)
        })?;
        self.step("list IOMMU groups and their viability", |s| {
            s.list_groups(placed)
        })?;
        let container = self.step("open a container", Self::open_container)?;
        let group = self.step(
            &format!("attach IOMMU group {} to the container", target.group),
            |s| s.attach_group(container, target.group),
        )?;
        self.step("select the Type1v2 IOMMU backend", |s| {
            s.set_iommu(container)
        })?;
        let device = self.step(&format!("open device {}", target.bdf), |s| {
            s.open_device(group, target.bdf)
        })?;
        let regions = self.step("device regions", |s| s.regions(device))?;
        let irqs = self.step("device IRQ indexes", |s| s.irqs(device))?;
        self.step("config space: guest-visible beside physical", |s| {
            s.config_view(device, target.bdf)
        })?;
        self.step("guest enables memory decode, bus mastering and INTx", |s| {
            s.enable_bus_master(device, target.bdf)
        })?;
        let mapped = self.step("map guest memory for DMA", |s| s.map_guest(container))?;
        let faults = self.step("device DMA through the IOMMU", |s| s.device_dma(target.bdf))?;
        let delivered = self.step("interrupts reach their events", |s| {
            s.interrupts(device, dev, target.bdf, &irqs)
        })?;
        let resets = self.step("function reset and hot reset", |s| {
            s.reset(device, group, target.bdf)
        })?;
        self.step("close everything and check the machine is clean", |s| {
            s.teardown(container, group, device, target.bdf)
        })?;
        Ok(json!({
            "device": target.bdf.to_string(),
            "description": target.description,
            "steps_passed": self.report.steps().len(),
            "regions_present": regions,
            "dma_bytes_mapped": mapped,
            "dma_faults_recorded": faults,
            "interrupts_delivered": delivered,
            "resets_performed": resets,
        }))
    }

    // ------------------------------------------------------------------ steps

    fn register(
        &mut self,
        placed: &[Placed],
        target: &Placed,
    ) -> Outcome<(DeviceId, Value, Vec<String>)> {
        let mut text = Vec::new();
        let mut rows = Vec::new();
        let mut assigned = None;
        for p in placed {
            let (vendor, device, class) = self.ids(p.bdf);
            let mut outcome = String::from("host driver");
            if p.driver == "vfio-pci" {
                let probe = self.vfio.driver_mut().probe(p.bdf);
                outcome = match probe {
                    Ok(state) => {
                        let id = self
                            .vfio
                            .register_device(&p.bdf.to_string(), p.group, state)
                            .map_err(errno("registering the device with the VFIO core"))?;
                        if p.bdf == target.bdf {
                            assigned = Some(id);
                        }
                        "registered".to_string()
                    }
                    Err(Errno::EINVAL) => {
                        "vfio-pci probe refused: not a type-0 function (EINVAL)".into()
                    }
                    Err(e) => format!("vfio-pci probe refused: {e}"),
                };
            }
            text.push(format!(
                "{}  {vendor:04x}:{device:04x} class {class:06x}  group {:<2} {:<14} {}",
                p.bdf, p.group, p.driver, p.description
            ));
            rows.push(json!({
                "bdf": p.bdf.to_string(), "vendor": vendor, "device": device, "class": class,
                "group": p.group, "driver": p.driver, "description": p.description,
                "vfio": outcome,
            }));
        }
        let id = assigned.ok_or_else(|| format!("vfio-pci refused {}", target.bdf))?;
        Ok((id, json!({ "functions": rows }), text))
    }

    fn ids(&mut self, bdf: Bdf) -> (u16, u16, u32) {
        let pci = self.vfio.driver_mut().access_mut();
        let vendor = pci.config_read(bdf, 0, Width::Word).unwrap_or(0xffff) as u16;
        let device = pci.config_read(bdf, 2, Width::Word).unwrap_or(0xffff) as u16;
        let class = pci.config_read(bdf, 8, Width::Dword).unwrap_or(0) >> 8;
        (vendor, device, class)
    }

    fn list_groups(&mut self, placed: &[Placed]) -> Outcome<((), Value, Vec<String>)> {
        let mut ids: Vec<u32> = placed.iter().map(|p| p.group).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut text = Vec::new();
        let mut rows = Vec::new();
        for id in ids {
            let members: Vec<String> = placed
                .iter()
                .filter(|p| p.group == id)
                .map(|p| format!("{} ({})", p.bdf, p.driver))
                .collect();
            let group = self
                .vfio
                .open_group(id)
                .map_err(errno("opening the group file"))?;
            let flags = self.group_status(group)?;
            self.vfio
                .close(group)
                .map_err(errno("closing the group file"))?;
            let viable = flags & group_flags::VIABLE != 0;
            text.push(format!(
                "/dev/vfio/{id}: {}  [{}]",
                if viable {
                    "viable"
                } else {
                    "NOT viable (a host driver does DMA in it)"
                },
                members.join(", ")
            ));
            rows.push(
                json!({ "group": id, "status_flags": flags, "viable": viable, "members": members }),
            );
        }
        Ok(((), json!({ "groups": rows }), text))
    }

    /// `VFIO_GROUP_GET_STATUS` flags of group file `group`.
    fn group_status(&mut self, group: Fd) -> Outcome<u32> {
        let status = uapi::GroupStatus { argsz: 8, flags: 0 };
        let (buf, _) = ioctl_buffer(&mut self.vfio, group, ioctl::GROUP_GET_STATUS, &status, 8)
            .map_err(errno("VFIO_GROUP_GET_STATUS"))?;
        Ok(decode::<uapi::GroupStatus>(&buf).flags)
    }

    fn open_container(&mut self) -> Outcome<(Fd, Value, Vec<String>)> {
        let c = self
            .vfio
            .open_container()
            .map_err(errno("opening /dev/vfio/vfio"))?;
        let version = self
            .vfio
            .ioctl(c, ioctl::GET_API_VERSION, Arg::None)
            .map_err(errno("VFIO_GET_API_VERSION"))?;
        if version != i64::from(uapi::VFIO_API_VERSION) {
            return Err(format!(
                "API version {version}, expected {}",
                uapi::VFIO_API_VERSION
            ));
        }
        let mut answers = Vec::new();
        for (name, ext) in [
            ("TYPE1", extension::TYPE1_IOMMU),
            ("TYPE1v2", extension::TYPE1V2_IOMMU),
            ("UNMAP_ALL", extension::UNMAP_ALL),
            ("UPDATE_VADDR", extension::UPDATE_VADDR),
        ] {
            let answer = self
                .vfio
                .ioctl(c, ioctl::CHECK_EXTENSION, Arg::Value(u64::from(ext)))
                .map_err(errno("VFIO_CHECK_EXTENSION"))?;
            answers.push((name, answer));
        }
        if answers.iter().any(|&(n, a)| n == "TYPE1v2" && a != 1) {
            return Err("the container does not offer Type1v2".into());
        }
        let line = answers
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(" ");
        Ok((
            c,
            json!({ "api_version": version, "extensions": answers.iter().map(|(n, a)| json!({n.to_string(): a})).collect::<Vec<_>>() }),
            vec![format!("API version {version}; CHECK_EXTENSION {line}")],
        ))
    }

    fn attach_group(&mut self, container: Fd, id: u32) -> Outcome<(Fd, Value, Vec<String>)> {
        let group = self
            .vfio
            .open_group(id)
            .map_err(errno("opening the group file"))?;
        let before = self.group_status(group)?;
        if before & group_flags::VIABLE == 0 {
            return Err(format!("group {id} is not viable"));
        }
        let raw = container.raw();
        ioctl_buffer(&mut self.vfio, group, ioctl::GROUP_SET_CONTAINER, &raw, 4)
            .map_err(errno("VFIO_GROUP_SET_CONTAINER"))?;
        let after = self.group_status(group)?;
        if after != group_flags::VIABLE | group_flags::CONTAINER_SET {
            return Err(format!(
                "status after SET_CONTAINER is {after:#x}, expected 0x3"
            ));
        }
        let claimed = self.sim.group_claimed(id);
        if !claimed {
            return Err("the platform does not show the group's DMA ownership claimed".into());
        }
        Ok((
            group,
            json!({ "status_before": before, "status_after": after, "dma_owner_claimed": claimed }),
            vec![format!(
                "GET_STATUS {before:#x} -> SET_CONTAINER -> {after:#x} (VIABLE|CONTAINER_SET); DMA ownership claimed"
            )],
        ))
    }

    fn set_iommu(&mut self, container: Fd) -> Outcome<((), Value, Vec<String>)> {
        self.vfio
            .ioctl(
                container,
                ioctl::SET_IOMMU,
                Arg::Value(u64::from(extension::TYPE1V2_IOMMU)),
            )
            .map_err(errno("VFIO_SET_IOMMU(TYPE1v2)"))?;
        let info = uapi::Type1Info {
            argsz: 24,
            ..Default::default()
        };
        // First call with the bare structure: the kernel answers with the size it needs.
        let (buf, _) = ioctl_buffer(&mut self.vfio, container, ioctl::IOMMU_GET_INFO, &info, 24)
            .map_err(errno("VFIO_IOMMU_GET_INFO"))?;
        let needed = decode::<uapi::Type1Info>(&buf).argsz;
        let info = uapi::Type1Info {
            argsz: needed,
            ..Default::default()
        };
        let (buf, _) = ioctl_buffer(
            &mut self.vfio,
            container,
            ioctl::IOMMU_GET_INFO,
            &info,
            needed as usize,
        )
        .map_err(errno("VFIO_IOMMU_GET_INFO"))?;
        let head: uapi::Type1Info = decode(&buf);
        let mut ranges = Vec::new();
        let mut avail = None;
        for cap in caps(&buf, head.cap_offset) {
            match cap.id {
                1 => {
                    let n = le32(&cap.payload, 0) as usize;
                    for i in 0..n.min(64) {
                        ranges.push((
                            le64(&cap.payload, 8 + 16 * i),
                            le64(&cap.payload, 16 + 16 * i),
                        ));
                    }
                }
                3 => avail = Some(le32(&cap.payload, 0)),
                _ => {}
            }
        }
        if ranges.is_empty() {
            return Err("GET_INFO reported no valid IOVA range".into());
        }
        let range_text: Vec<String> = ranges
            .iter()
            .map(|(a, b)| format!("[{a:#x}, {b:#x}]"))
            .collect();
        Ok((
            (),
            json!({
                "iova_pgsizes": head.iova_pgsizes, "info_argsz": needed,
                "iova_ranges": ranges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
                "dma_avail": avail,
            }),
            vec![
                format!(
                    "page sizes {:#x}; GET_INFO needs argsz {needed}",
                    head.iova_pgsizes
                ),
                format!("valid IOVA ranges {}", range_text.join(" ")),
                format!("DMA mappings available: {}", avail.unwrap_or(0)),
            ],
        ))
    }

    fn open_device(&mut self, group: Fd, bdf: Bdf) -> Outcome<(Fd, Value, Vec<String>)> {
        let mut name = bdf.to_string().into_bytes();
        name.push(0);
        let fd = self
            .vfio
            .ioctl(group, ioctl::GROUP_GET_DEVICE_FD, Arg::Buffer(&mut name))
            .map_err(errno("VFIO_GROUP_GET_DEVICE_FD"))?;
        let device = Fd::from_raw(i32::try_from(fd).map_err(|_| "bad descriptor")?);
        let defect = self
            .vfio
            .with_device(device, |_, state| Ok(state.config().defect()))
            .map_err(errno("reading the device state"))?;
        if let Some(defect) = defect {
            return Err(format!("the device's config space is malformed: {defect}"));
        }
        let info = uapi::DeviceInfo {
            argsz: 24,
            ..Default::default()
        };
        let (buf, _) = ioctl_buffer(&mut self.vfio, device, ioctl::DEVICE_GET_INFO, &info, 24)
            .map_err(errno("VFIO_DEVICE_GET_INFO"))?;
        let info: uapi::DeviceInfo = decode(&buf);
        if info.flags & device_flags::PCI == 0 {
            return Err(format!("GET_INFO flags {:#x} lack PCI", info.flags));
        }
        let reset = info.flags & device_flags::RESET != 0;
        Ok((
            device,
            json!({ "flags": info.flags, "num_regions": info.num_regions, "num_irqs": info.num_irqs, "reset": reset }),
            vec![format!(
                "device fd {fd}: flags {:#x} (PCI{}), {} regions, {} IRQ indexes",
                info.flags,
                if reset { "|RESET" } else { "" },
                info.num_regions,
                info.num_irqs
            )],
        ))
    }

    fn regions(&mut self, device: Fd) -> Outcome<(usize, Value, Vec<String>)> {
        let mut text = Vec::new();
        let mut rows = Vec::new();
        let mut present = 0;
        for index in 0..region_index::NUM {
            let name = REGION_NAMES[index as usize];
            let info = uapi::RegionInfo {
                argsz: 32,
                index,
                ..Default::default()
            };
            let answer = ioctl_buffer(
                &mut self.vfio,
                device,
                ioctl::DEVICE_GET_REGION_INFO,
                &info,
                32,
            );
            let (buf, _) = match answer {
                Ok(a) => a,
                Err(e) => {
                    text.push(format!("{index} {name:<6} not present ({e})"));
                    rows.push(json!({ "index": index, "name": name, "errno": e.name() }));
                    continue;
                }
            };
            let mut info: uapi::RegionInfo = decode(&buf);
            let mut cap_names = Vec::new();
            if info.argsz > 32 {
                // Capabilities did not fit: ask again with the size the kernel asked for.
                let again = uapi::RegionInfo {
                    argsz: info.argsz,
                    index,
                    ..Default::default()
                };
                let (buf, _) = ioctl_buffer(
                    &mut self.vfio,
                    device,
                    ioctl::DEVICE_GET_REGION_INFO,
                    &again,
                    info.argsz as usize,
                )
                .map_err(errno("VFIO_DEVICE_GET_REGION_INFO"))?;
                info = decode(&buf);
                for cap in caps(&buf, info.cap_offset) {
                    cap_names.push(match cap.id {
                        region_cap::SPARSE_MMAP => "SPARSE_MMAP".to_string(),
                        region_cap::TYPE => "TYPE".to_string(),
                        region_cap::MSIX_MAPPABLE => "MSIX_MAPPABLE".to_string(),
                        other => format!("cap {other}"),
                    });
                }
            }
            if info.size != 0 {
                present += 1;
            }
            let flags = region_flag_text(info.flags);
            text.push(format!(
                "{index} {name:<6} size {:>#12x} offset {:#014x} {flags}{}",
                info.size,
                info.offset,
                if cap_names.is_empty() {
                    String::new()
                } else {
                    format!(" caps: {}", cap_names.join(","))
                }
            ));
            rows.push(json!({
                "index": index, "name": name, "flags": info.flags, "size": info.size,
                "offset": info.offset, "caps": cap_names,
            }));
        }
        Ok((present, json!({ "regions": rows }), text))
    }

    fn irqs(&mut self, device: Fd) -> Outcome<([u32; 5], Value, Vec<String>)> {
        let mut counts = [0u32; 5];
        let mut text = Vec::new();
        let mut rows = Vec::new();
        for index in 0..irq_index::NUM {
            let name = IRQ_NAMES[index as usize];
            let info = uapi::IrqInfo {
                argsz: 16,
                index,
                ..Default::default()
            };
            match ioctl_buffer(
                &mut self.vfio,
                device,
                ioctl::DEVICE_GET_IRQ_INFO,
                &info,
                16,
            ) {
                Ok((buf, _)) => {
                    let info: uapi::IrqInfo = decode(&buf);
                    counts[index as usize] = info.count;
                    text.push(format!(
                        "{index} {name:<5} count {:<4} flags {:#x} {}",
                        info.count,
                        info.flags,
                        irq_flag_text(info.flags)
                    ));
                    rows.push(json!({ "index": index, "name": name, "flags": info.flags, "count": info.count }));
                }
                Err(e) => {
                    text.push(format!("{index} {name:<5} not available ({e})"));
                    rows.push(json!({ "index": index, "name": name, "errno": e.name() }));
                }
            }
        }
        Ok((counts, json!({ "irqs": rows }), text))
    }

    fn config_view(&mut self, device: Fd, bdf: Bdf) -> Outcome<((), Value, Vec<String>)> {
        let size = self
            .vfio
            .with_device(device, |_, state| Ok(state.config().size()))
            .map_err(errno("reading the config size"))?;
        let mut guest = vec![0u8; usize::from(size)];
        let offset = u64::from(region_index::CONFIG) << region_index::OFFSET_SHIFT;
        let n = self
            .vfio
            .device_read(device, offset, &mut guest)
            .map_err(errno("reading the CONFIG region"))?;
        if n != guest.len() {
            return Err(format!(
                "CONFIG region read returned {n} of {} bytes",
                guest.len()
            ));
        }
        let mut physical = vec![0u8; usize::from(size)];
        for (i, chunk) in physical.chunks_mut(4).enumerate() {
            let value = self
                .vfio
                .driver_mut()
                .access_mut()
                .config_read(bdf, (i * 4) as u16, Width::Dword)
                .map_err(errno("reading physical config space"))?;
            chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
        }
        let owners = self
            .vfio
            .with_device(device, |_, state| {
                Ok(describe_owners(state.config(), &guest, &physical))
            })
            .map_err(errno("reading the capability table"))?;
        let capabilities = self
            .vfio
            .with_device(device, |_, state| {
                Ok(state
                    .config()
                    .capabilities()
                    .iter()
                    .map(|c| {
                        format!(
                            "{}@{:#x}+{}{}",
                            c.name(),
                            c.offset,
                            c.len,
                            match c.visibility {
                                vfio_core::pci::CapVisibility::Kept => "",
                                vfio_core::pci::CapVisibility::Hidden => " (hidden)",
                                vfio_core::pci::CapVisibility::Placeholder => " (placeholder)",
                            }
                        )
                    })
                    .collect::<Vec<_>>())
            })
            .map_err(errno("reading the capability table"))?;
        let mut text = vec![
            format!("capabilities: {}", capabilities.join(", ")),
            "offset  guest-visible (* = differs from physical)        physical".to_string(),
        ];
        let mut rows = Vec::new();
        for row in 0..guest.len() / 16 {
            let at = row * 16;
            let g = &guest[at..at + 16];
            let p = &physical[at..at + 16];
            let interesting = at < 0x40 || g.iter().chain(p).any(|&b| b != 0) || g != p;
            if !interesting {
                continue;
            }
            let (cells, phys) = compare_row(g, p);
            text.push(format!("{at:#05x} {cells}   {phys}"));
            rows.push(json!({ "offset": at, "guest": hex(g), "physical": hex(p) }));
        }
        text.push(format!("{} byte ranges differ:", owners.len()));
        for o in &owners {
            text.push(format!(
                "  {:#05x}..{:#05x} {}: guest {} physical {}",
                o["offset"].as_u64().unwrap_or(0),
                o["end"].as_u64().unwrap_or(0),
                o["owner"].as_str().unwrap_or(""),
                o["guest"].as_str().unwrap_or(""),
                o["physical"].as_str().unwrap_or("")
            ));
        }
        Ok((
            (),
            json!({ "size": size, "capabilities": capabilities, "rows": rows, "differences": owners }),
            text,
        ))
    }

    fn enable_bus_master(&mut self, device: Fd, bdf: Bdf) -> Outcome<((), Value, Vec<String>)> {
        let offset = (u64::from(region_index::CONFIG) << region_index::OFFSET_SHIFT) + 4;
        let mut cmd = [0u8; 2];
        self.vfio
            .device_read(device, offset, &mut cmd)
            .map_err(errno("reading Command"))?;
        // Memory decode and bus master on; INTx disable off (a guest driver using INTx
        // clears it; MSI/MSI-X users do not care).
        let value = (u16::from_le_bytes(cmd) | 0x0006) & !0x0400;
        self.vfio
            .device_write(device, offset, &value.to_le_bytes())
            .map_err(errno("writing Command"))?;
        let physical = self
            .vfio
            .driver_mut()
            .access_mut()
            .config_read(bdf, 4, Width::Word)
            .map_err(errno("reading physical Command"))?;
        if physical & 0x4 == 0 {
            return Err(format!(
                "bus master did not reach the hardware (Command {physical:#06x})"
            ));
        }
        Ok((
            (),
            json!({ "command_written": value, "command_physical": physical }),
            vec![format!(
                "guest wrote Command {value:#06x}; hardware Command now {physical:#06x}"
            )],
        ))
    }

    fn map_guest(&mut self, container: Fd) -> Outcome<(u64, Value, Vec<String>)> {
        let phys = self
            .sim
            .alloc(GUEST_VADDR, GUEST_LEN, vfio_sim::Backing::Ram)
            .map_err(errno("allocating guest RAM"))?;
        let ro_phys = self
            .sim
            .alloc(RO_VADDR, 0x1000, vfio_sim::Backing::Ram)
            .map_err(errno("allocating the read-only page"))?;
        let map = uapi::DmaMap {
            argsz: 32,
            flags: dma_map_flags::READ | dma_map_flags::WRITE,
            vaddr: GUEST_VADDR,
            iova: GUEST_IOVA,
            size: GUEST_LEN,
        };
        ioctl_buffer(&mut self.vfio, container, ioctl::IOMMU_MAP_DMA, &map, 32)
            .map_err(errno("VFIO_IOMMU_MAP_DMA (guest RAM)"))?;
        let ro = uapi::DmaMap {
            argsz: 32,
            flags: dma_map_flags::READ,
            vaddr: RO_VADDR,
            iova: RO_IOVA,
            size: 0x1000,
        };
        ioctl_buffer(&mut self.vfio, container, ioctl::IOMMU_MAP_DMA, &ro, 32)
            .map_err(errno("VFIO_IOMMU_MAP_DMA (read-only page)"))?;
        let overlap = ioctl_buffer(&mut self.vfio, container, ioctl::IOMMU_MAP_DMA, &map, 32);
        if overlap.map(|_| ()) != Err(Errno::EEXIST) {
            return Err("an overlapping MAP_DMA was not refused with EEXIST".into());
        }
        let locked = vfio_core::platform::HostMemory::locked_pages(self.vfio.memory());
        let expected = (GUEST_LEN + 0x1000) / 0x1000;
        if locked != expected {
            return Err(format!(
                "{locked} pages charged to locked memory, expected {expected}"
            ));
        }
        let entries: Vec<Value> = self
            .vfio
            .container_mappings(container)
            .map_err(errno("listing mappings"))?
            .iter()
            .map(|e| json!({ "iova": e.iova, "size": e.size, "vaddr": e.vaddr, "prot": e.prot.bits() }))
            .collect();
        Ok((
            GUEST_LEN + 0x1000,
            json!({ "mappings": entries, "locked_pages": locked, "guest_phys": phys, "ro_phys": ro_phys }),
            vec![
                format!("IOVA {GUEST_IOVA:#x}+{GUEST_LEN:#x} -> vaddr {GUEST_VADDR:#x} (host phys {phys:#x}) READ|WRITE"),
                format!("IOVA {RO_IOVA:#x}+0x1000 -> vaddr {RO_VADDR:#x} (host phys {ro_phys:#x}) READ only"),
                format!("overlapping MAP_DMA refused with EEXIST; {locked} pages charged to locked memory"),
            ],
        ))
    }

    fn device_dma(&mut self, bdf: Bdf) -> Outcome<(usize, Value, Vec<String>)> {
        let pattern = b"VFIO: device wrote this through the IOMMU";
        let target = GUEST_IOVA + 0x2000;
        self.sim
            .dma_write(bdf, target, pattern)
            .map_err(|f| format!("DMA to mapped IOVA {target:#x} faulted: {f}"))?;
        let mut seen = vec![0u8; pattern.len()];
        self.sim
            .read_virt(GUEST_VADDR + 0x2000, &mut seen)
            .map_err(errno("reading guest memory"))?;
        if seen != pattern {
            return Err("the guest does not see what the device wrote".into());
        }
        let mut back = vec![0u8; pattern.len()];
        self.sim
            .dma_read(bdf, target, &mut back)
            .map_err(|f| format!("DMA read of mapped IOVA {target:#x} faulted: {f}"))?;
        let before = self.sim.faults().len();
        let unmapped = self.sim.dma_write(bdf, UNMAPPED_IOVA, pattern);
        let Err(fault) = unmapped else {
            return Err(format!(
                "DMA to unmapped IOVA {UNMAPPED_IOVA:#x} was not stopped"
            ));
        };
        if fault.reason != FaultReason::Unmapped {
            return Err(format!(
                "unmapped DMA faulted for the wrong reason: {fault}"
            ));
        }
        let ro = self.sim.dma_write(bdf, RO_IOVA, pattern);
        let Err(ro_fault) = ro else {
            return Err("a device write to a READ-only mapping was not stopped".into());
        };
        if ro_fault.reason != FaultReason::Permission {
            return Err(format!(
                "read-only DMA faulted for the wrong reason: {ro_fault}"
            ));
        }
        let mut page = vec![0u8; pattern.len()];
        self.sim
            .read_virt(RO_VADDR, &mut page)
            .map_err(errno("reading the read-only page"))?;
        if page.iter().any(|&b| b != 0) {
            return Err("a refused DMA changed memory".into());
        }
        let recorded = self.sim.faults().len() - before;
        Ok((
            recorded,
            json!({
                "mapped_write": { "iova": target, "bytes": pattern.len(), "result": "ok" },
                "unmapped_write": { "iova": UNMAPPED_IOVA, "fault": fault.to_string() },
                "readonly_write": { "iova": RO_IOVA, "fault": ro_fault.to_string() },
                "faults_recorded": recorded,
            }),
            vec![
                format!(
                    "write {} bytes at IOVA {target:#x}: ok, the guest reads them at vaddr {:#x}",
                    pattern.len(),
                    GUEST_VADDR + 0x2000
                ),
                format!(
                    "write at unmapped IOVA {UNMAPPED_IOVA:#x}: FAULT ({fault}), no memory touched"
                ),
                format!("write at READ-only IOVA {RO_IOVA:#x}: FAULT ({ro_fault}), page unchanged"),
            ],
        ))
    }

    fn interrupts(
        &mut self,
        device: Fd,
        dev: DeviceId,
        bdf: Bdf,
        counts: &[u32; 5],
    ) -> Outcome<StepOutput<u64>> {
        // Every interrupt index the device has, one after the other (they are mutually
        // exclusive). An index whose enable the core refuses (e.g. an MSI-X table in a BAR
        // the function does not implement) is reported and skipped.
        let mut text = Vec::new();
        let mut details = Vec::new();
        let mut delivered = 0;
        for index in [irq_index::INTX, irq_index::MSI, irq_index::MSIX] {
            let count = counts[index as usize];
            if count == 0 {
                continue;
            }
            let name = IRQ_NAMES[index as usize];
            let outcome = if index == irq_index::INTX {
                self.intx_demo(device, bdf)?
            } else {
                self.msi_demo(device, dev, bdf, index, count)?
            };
            match outcome {
                Ok((n, d, t)) => {
                    delivered += n;
                    details.push(d);
                    text.extend(t);
                }
                Err(e) => {
                    details.push(json!({ "index": name, "refused": e.name() }));
                    text.push(format!("{name}: enable refused with {e}"));
                }
            }
        }
        if details.is_empty() {
            text.push("the device signals no interrupt (no pin, MSI or MSI-X)".into());
        }
        Ok((delivered, json!({ "indexes": details }), text))
    }

    /// `VFIO_DEVICE_SET_IRQS` with `header` followed by `fds` (the `DATA_EVENTFD`
    /// payload, empty for `DATA_NONE`); `argsz` is set here from what is sent, so the
    /// caller's value is ignored.
    fn set_irqs(&mut self, device: Fd, header: uapi::IrqSet, fds: &[i32]) -> Result<i64, Errno> {
        let argsz = size_of::<uapi::IrqSet>() + size_of_val(fds);
        let header = uapi::IrqSet {
            argsz: u32::try_from(argsz).map_err(|_| Errno::EINVAL)?,
            ..header
        };
        let mut buf = header.as_bytes_vec();
        for fd in fds {
            buf.extend_from_slice(&fd.to_le_bytes());
        }
        self.vfio
            .ioctl(device, ioctl::DEVICE_SET_IRQS, Arg::Buffer(&mut buf))
    }

    /// INTx: the device asserts its line, the host handler signals the eventfd and masks
    /// (automask), a second interrupt is not taken, UNMASK while the line is still
    /// asserted re-signals, and after the device deasserts UNMASK re-arms it.
    fn intx_demo(&mut self, device: Fd, bdf: Bdf) -> Outcome<Result<StepOutput<u64>, Errno>> {
        let events = self.vfio.driver_mut().events_mut().clone();
        let efd = events.create_event();
        let flags = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
        let enable = irq_set(flags, irq_index::INTX, 0, 1);
        if let Err(e) = self.set_irqs(device, enable, &[efd]) {
            return Ok(Err(e));
        }
        let fire = |s: &mut Self| -> Outcome<bool> {
            s.vfio
                .with_device(device, |driver, state| Ok(driver.intx_fired(state)))
                .map_err(errno("INTx delivery"))
        };
        let mut text = vec![format!(
            "INTx: trigger eventfd {efd}; the host line is requested"
        )];
        if !self.sim.raise_intx(bdf, true) {
            return Err("the asserted INTx line does not reach the host".into());
        }
        if !fire(self)? || events.count(efd) != Some(1) {
            return Err("the INTx interrupt did not reach its eventfd".into());
        }
        let masked = self
            .vfio
            .with_device(device, |_, state| Ok(state.intx_masked()))
            .map_err(errno("reading the INTx state"))?;
        if !masked || fire(self)? {
            return Err("INTx was not automasked after the first interrupt".into());
        }
        text.push(format!("device asserts INTx: eventfd {efd} counted 1 and the line is automasked; a second interrupt is not taken"));
        let unmask = irq_set(
            irq_set_flags::DATA_NONE | irq_set_flags::ACTION_UNMASK,
            irq_index::INTX,
            0,
            1,
        );
        self.set_irqs(device, unmask, &[])
            .map_err(errno("SET_IRQS INTx UNMASK"))?;
        if events.count(efd) != Some(2) {
            return Err("UNMASK with the line still asserted did not re-signal".into());
        }
        text.push("UNMASK while the device still asserts: still pending, eventfd signalled again, stays masked".into());
        self.sim.set_intx(bdf, false);
        self.set_irqs(device, unmask, &[])
            .map_err(errno("SET_IRQS INTx UNMASK"))?;
        if !self.sim.raise_intx(bdf, true) || !fire(self)? || events.count(efd) != Some(3) {
            return Err("after deassert and UNMASK, a new INTx did not arrive".into());
        }
        self.sim.set_intx(bdf, false);
        text.push(
            "device deasserts, UNMASK re-arms; the next assertion is delivered (count 3)".into(),
        );
        let off = irq_set(
            irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER,
            irq_index::INTX,
            0,
            0,
        );
        self.set_irqs(device, off, &[])
            .map_err(errno("SET_IRQS INTx disable"))?;
        text.push("INTx disabled (DATA_NONE|ACTION_TRIGGER, count 0)".into());
        Ok(Ok((
            3,
            json!({ "index": "INTx", "eventfd": efd, "count": 3, "automask": true, "unmask": true }),
            text,
        )))
    }

    /// MSI or MSI-X: up to [`MAX_SESSION_VECTORS`] vectors wired to eventfds, the device
    /// raises the last one and only its eventfd counts; MSI-X then grows by one vector
    /// while enabled (the recent kernels' dynamic MSI-X); a loopback trigger of vector 0;
    /// disable.
    fn msi_demo(
        &mut self,
        device: Fd,
        dev: DeviceId,
        bdf: Bdf,
        index: u32,
        count: u32,
    ) -> Outcome<Result<StepOutput<u64>, Errno>> {
        let kind = if index == irq_index::MSIX {
            MsiKind::Msix
        } else {
            MsiKind::Msi
        };
        let name = IRQ_NAMES[index as usize];
        let n = count.clamp(1, MAX_SESSION_VECTORS);
        let events = self.vfio.driver_mut().events_mut().clone();
        let mut fds: Vec<i32> = (0..n).map(|_| events.create_event()).collect();
        let flags = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
        let enable = irq_set(flags, index, 0, n);
        match self.set_irqs(device, enable, &fds) {
            Ok(0) => {}
            Ok(granted) => return Err(format!("SET_IRQS granted only {granted} vectors")),
            Err(e) => return Ok(Err(e)),
        }
        let mut text = vec![format!("{name}: {n} vector(s) wired to eventfds {fds:?}")];
        let fire = |s: &mut Self, vector: u32| -> Outcome<()> {
            let raised = match kind {
                MsiKind::Msix => s.sim.raise_msix(bdf, vector as u16),
                MsiKind::Msi => s.sim.raise_msi(bdf, vector as u16),
            };
            let v = raised
                .ok_or_else(|| format!("the hardware has {name} vector {vector} disabled"))?;
            let (driver, state) = s.vfio.device_parts(dev).ok_or("device vanished")?;
            if driver.msi_fired(state, kind, v) {
                Ok(())
            } else {
                Err(format!("{name} vector {vector} was not delivered"))
            }
        };
        let last = n - 1;
        fire(self, last)?;
        for (i, &fd) in fds.iter().enumerate() {
            let expected = u64::from(i as u32 == last);
            if events.count(fd) != Some(expected) {
                return Err(format!(
                    "eventfd {fd} of vector {i} counted {:?}, expected {expected}",
                    events.count(fd)
                ));
            }
        }
        text.push(format!(
            "device raised {name} vector {last}: eventfd {} counted 1, the others 0",
            fds[last as usize]
        ));
        let mut vectors = n;
        if kind == MsiKind::Msix && count > n {
            let extra = count - 1;
            let fd = events.create_event();
            let grow = irq_set(flags, index, extra, 1);
            self.set_irqs(device, grow, &[fd])
                .map_err(errno("SET_IRQS MSI-X growth while enabled"))?;
            fire(self, extra)?;
            if events.count(fd) != Some(1) {
                return Err(format!(
                    "the added MSI-X vector {extra} did not reach its eventfd"
                ));
            }
            fds.push(fd);
            vectors += 1;
            text.push(format!(
                "vector {extra} added while enabled (dynamic MSI-X) and delivered to eventfd {fd}"
            ));
        }
        let loopback = irq_set(
            irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER,
            index,
            0,
            1,
        );
        self.set_irqs(device, loopback, &[])
            .map_err(errno("SET_IRQS loopback trigger"))?;
        if events.count(fds[0]) != Some(u64::from(last == 0) + 1) {
            return Err("the loopback trigger did not reach vector 0's eventfd".into());
        }
        text.push(format!(
            "loopback trigger of vector 0: eventfd {} signalled",
            fds[0]
        ));
        let off = uapi::IrqSet {
            count: 0,
            ..loopback
        };
        self.set_irqs(device, off, &[])
            .map_err(errno("SET_IRQS disable"))?;
        text.push(format!(
            "{name} disabled (DATA_NONE|ACTION_TRIGGER, count 0)"
        ));
        let total: u64 = fds.iter().map(|&fd| events.count(fd).unwrap_or(0)).sum();
        let counts: Vec<u64> = fds
            .iter()
            .map(|&fd| events.count(fd).unwrap_or(0))
            .collect();
        Ok(Ok((
            total,
            json!({ "index": name, "vectors": vectors, "eventfds": fds, "counts": counts, "loopback": true }),
            text,
        )))
    }

    fn reset(&mut self, device: Fd, group: Fd, bdf: Bdf) -> Outcome<StepOutput<u64>> {
        let info = uapi::DeviceInfo {
            argsz: 24,
            ..Default::default()
        };
        let (buf, _) = ioctl_buffer(&mut self.vfio, device, ioctl::DEVICE_GET_INFO, &info, 24)
            .map_err(errno("VFIO_DEVICE_GET_INFO"))?;
        let flags = decode::<uapi::DeviceInfo>(&buf).flags;
        let physical = |s: &mut Self, offset: u16, width: Width| {
            s.vfio
                .driver_mut()
                .access_mut()
                .config_read(bdf, offset, width)
                .unwrap_or(0)
        };
        let bar0 = physical(self, 0x10, Width::Dword);
        let command = physical(self, 0x04, Width::Word);
        let mut text = Vec::new();
        let mut resets = 0;
        let before = self.sim.reset_count(bdf).unwrap_or(0);
        let result = self.vfio.ioctl(device, ioctl::DEVICE_RESET, Arg::None);
        let after = self.sim.reset_count(bdf).unwrap_or(0);
        let mut details = json!({ "function_reset": flags & device_flags::RESET != 0 });
        if flags & device_flags::RESET != 0 {
            result.map_err(errno("VFIO_DEVICE_RESET"))?;
            if after != before + 1 {
                return Err(format!(
                    "the hardware saw {} resets, expected 1",
                    after - before
                ));
            }
            let (bar_after, cmd_after) = (
                physical(self, 0x10, Width::Dword),
                physical(self, 0x04, Width::Word),
            );
            if (bar_after, cmd_after) != (bar0, command) {
                return Err(format!(
                    "after the reset BAR0/Command are {bar_after:#x}/{cmd_after:#x}, expected {bar0:#x}/{command:#x}"
                ));
            }
            resets += 1;
            text.push(format!(
                "VFIO_DEVICE_RESET: function reset done; BAR0 {bar0:#x} and Command {command:#x} are as before (the core restores what the reset clears)"
            ));
        } else {
            if result != Err(Errno::EINVAL) {
                return Err(format!(
                    "DEVICE_RESET without a reset method returned {result:?}, expected EINVAL"
                ));
            }
            text.push("no function reset method: VFIO_DEVICE_RESET refused with EINVAL, as the kernel does".into());
        }
        // Hot reset: ask which functions a bus reset touches (first with no room, as a VMM
        // does), then reset with the group file as proof of ownership.
        let mut probe = [12u32.to_le_bytes(), [0; 4], [0; 4]].concat();
        match self.vfio.ioctl(
            device,
            ioctl::DEVICE_GET_PCI_HOT_RESET_INFO,
            Arg::Buffer(&mut probe),
        ) {
            Err(Errno::ENOSPC) => {}
            Err(Errno::ENODEV) => {
                text.push("no bus or slot reset reaches this function: GET_PCI_HOT_RESET_INFO answers ENODEV".into());
                details["hot_reset"] = json!("ENODEV");
                return Ok((resets, details, text));
            }
            other => {
                return Err(format!(
                    "GET_PCI_HOT_RESET_INFO with no room returned {other:?}, expected ENOSPC"
                ))
            }
        }
        let count = le32(&probe, 8);
        let argsz = 12 + 8 * count;
        let mut info = vec![0u8; argsz as usize];
        info[..4].copy_from_slice(&argsz.to_le_bytes());
        self.vfio
            .ioctl(
                device,
                ioctl::DEVICE_GET_PCI_HOT_RESET_INFO,
                Arg::Buffer(&mut info),
            )
            .map_err(errno("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"))?;
        let affected: Vec<String> = (0..count as usize)
            .map(|i| {
                let at = 12 + 8 * i;
                let group_id = le32(&info, at);
                let segment = u16::from_le_bytes([info[at + 4], info[at + 5]]);
                let devfn = info[at + 7];
                format!(
                    "{segment:04x}:{:02x}:{:02x}.{} (group {group_id})",
                    info[at + 6],
                    devfn >> 3,
                    devfn & 7
                )
            })
            .collect();
        text.push(format!(
            "GET_PCI_HOT_RESET_INFO: ENOSPC with count {count}, then the affected functions: {}",
            affected.join(", ")
        ));
        let bus_before = self.sim.bus_reset_count();
        let mut reset = [
            16u32.to_le_bytes(),
            [0; 4],
            1u32.to_le_bytes(),
            group.raw().to_le_bytes(),
        ]
        .concat();
        let answer = self
            .vfio
            .ioctl(device, ioctl::DEVICE_PCI_HOT_RESET, Arg::Buffer(&mut reset));
        match answer {
            Ok(_) => {
                if self.sim.bus_reset_count() != bus_before + 1 {
                    return Err(
                        "PCI_HOT_RESET succeeded but no bus reset reached the hardware".into(),
                    );
                }
                resets += 1;
                text.push("VFIO_DEVICE_PCI_HOT_RESET with the group file as ownership proof: bus reset done".into());
            }
            Err(e) => {
                return Err(format!(
                    "VFIO_DEVICE_PCI_HOT_RESET with the owning group file failed: {e}"
                ))
            }
        }
        details["hot_reset"] = json!({ "affected": affected, "done": true });
        Ok((resets, details, text))
    }

    fn teardown(
        &mut self,
        container: Fd,
        group: Fd,
        device: Fd,
        bdf: Bdf,
    ) -> Outcome<((), Value, Vec<String>)> {
        let unmap = uapi::DmaUnmap {
            argsz: 24,
            flags: dma_unmap_flags::ALL,
            iova: 0,
            size: 0,
        };
        let (buf, _) = ioctl_buffer(
            &mut self.vfio,
            container,
            ioctl::IOMMU_UNMAP_DMA,
            &unmap,
            24,
        )
        .map_err(errno("VFIO_IOMMU_UNMAP_DMA (ALL)"))?;
        let unmapped = decode::<uapi::DmaUnmap>(&buf).size;
        if unmapped != GUEST_LEN + 0x1000 {
            return Err(format!(
                "UNMAP ALL removed {unmapped:#x} bytes, expected {:#x}",
                GUEST_LEN + 0x1000
            ));
        }
        if self.sim.dma_write(bdf, GUEST_IOVA, b"late").is_ok() {
            return Err("the device could still DMA after UNMAP".into());
        }
        self.vfio
            .close(device)
            .map_err(errno("closing the device"))?;
        let busy = self
            .vfio
            .ioctl(group, ioctl::GROUP_UNSET_CONTAINER, Arg::None);
        busy.map_err(errno("VFIO_GROUP_UNSET_CONTAINER"))?;
        self.vfio.close(group).map_err(errno("closing the group"))?;
        self.vfio
            .close(container)
            .map_err(errno("closing the container"))?;
        let locked = vfio_core::platform::HostMemory::locked_pages(self.vfio.memory());
        let domains = self.sim.domains().len();
        let pinned = self.sim.pinned_pages();
        let violations = self.sim.violations();
        let claimed = self.sim.group_claimed(self.sim.group_of(bdf).unwrap_or(0));
        let master = self
            .vfio
            .driver_mut()
            .access_mut()
            .config_read(bdf, 4, Width::Word)
            .unwrap_or(0)
            & 0x4;
        let mut problems = Vec::new();
        if locked != 0 {
            problems.push(format!("{locked} pages still locked"));
        }
        if pinned != 0 {
            problems.push(format!("{pinned} pages still pinned"));
        }
        if domains != 0 {
            problems.push(format!("{domains} IOMMU domains left"));
        }
        if claimed {
            problems.push("the group's DMA ownership is still claimed".into());
        }
        if master != 0 {
            problems.push("bus mastering still enabled after close".into());
        }
        problems.extend(violations.iter().map(|v| format!("platform misuse: {v}")));
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok((
            (),
            json!({ "unmapped_bytes": unmapped, "locked_pages": locked, "pinned_pages": pinned, "domains": domains }),
            vec![
                format!("UNMAP_DMA ALL removed {unmapped:#x} bytes; the device can no longer reach guest memory"),
                "device closed (bus master off, IRQs freed, function reset); group detached; files closed".into(),
                "no locked or pinned pages, no IOMMU domain, no DMA claim left".into(),
            ],
        ))
    }
}

trait BytesVec {
    fn as_bytes_vec(&self) -> Vec<u8>;
}

impl<T: zerocopy::IntoBytes + zerocopy::Immutable> BytesVec for T {
    fn as_bytes_vec(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

/// Groups the differing bytes into runs with one owner each.
fn describe_owners(config: &ConfigSpace, guest: &[u8], physical: &[u8]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut run: Option<(usize, usize, &'static str)> = None;
    let flush = |run: Option<(usize, usize, &'static str)>, out: &mut Vec<Value>| {
        if let Some((start, end, owner)) = run {
            out.push(json!({
                "offset": start, "end": end, "owner": owner,
                "guest": hex(&guest[start..end]), "physical": hex(&physical[start..end]),
            }));
        }
    };
    for pos in 0..guest.len().min(physical.len()) {
        if guest[pos] == physical[pos] {
            flush(run.take(), &mut out);
            continue;
        }
        let owner = config
            .byte_permission(pos as u16)
            .map_or("unknown", |p| p.owner);
        run = match run {
            Some((start, end, o)) if end == pos && o == owner => Some((start, pos + 1, o)),
            other => {
                flush(other, &mut out);
                Some((pos, pos + 1, owner))
            }
        };
    }
    flush(run, &mut out);
    out
}

/// A `VFIO_DEVICE_SET_IRQS` header (spec 04-pci-irq) for `count` vectors of IRQ `index`
/// from `start`; [`Session::set_irqs`] fills in `argsz`.
fn irq_set(flags: u32, index: u32, start: u32, count: u32) -> uapi::IrqSet {
    uapi::IrqSet {
        argsz: 0,
        flags,
        index,
        start,
        count,
    }
}

fn region_flag_text(flags: u32) -> String {
    let mut parts = Vec::new();
    for (bit, name) in [(1, "READ"), (2, "WRITE"), (4, "MMAP"), (8, "CAPS")] {
        if flags & bit != 0 {
            parts.push(name);
        }
    }
    if parts.is_empty() {
        "(unimplemented)".into()
    } else {
        parts.join("|")
    }
}

fn irq_flag_text(flags: u32) -> String {
    let mut parts = Vec::new();
    for (bit, name) in [
        (1, "EVENTFD"),
        (2, "MASKABLE"),
        (4, "AUTOMASKED"),
        (8, "NORESIZE"),
    ] {
        if flags & bit != 0 {
            parts.push(name);
        }
    }
    parts.join("|")
}
