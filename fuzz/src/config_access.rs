// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `config_access`: random config-space reads and writes of random widths and
//! offsets on every corpus image, checking the permission invariant.

use vfio_core::pci::{BytePermission, CapSpace};
use vfio_core::uapi::region_index;
use vfio_sim::SimMachine;

use crate::sim::{
    assign_first, check_container, corpus_functions, primary_bdf, single_function_machine,
    with_registry, Cursor, Registry,
};

/// Byte offset of the CONFIG region in the device file.
pub const CONFIG_REGION: u64 = (region_index::CONFIG as u64) << region_index::OFFSET_SHIFT;

/// The physical config space of `sim`'s primary function.
pub fn physical_config(sim: &SimMachine) -> Vec<u8> {
    sim.function(primary_bdf())
        .map(|f| f.config_bytes())
        .unwrap_or_default()
}

/// Extra (byte, bits) a write may change, and the RW1C bytes it may clear.
pub type Allowances = (Vec<(u64, u8)>, Vec<u64>);

/// What a user write of `count` bytes at `offset` may change in hardware
/// beyond the permission tables: the physical effects of the documented special
/// handlers (spec/03-pci-config.md §5–§6) as extra (byte, bits) allowances, and
/// the write-1-to-clear bytes the chunk's read-modify-write may clear. `None`
/// when the write may reload hardware state wholesale (a PM power-state write,
/// §6.1), so that nothing can be asserted.
pub fn special_allowances(
    vfio: &mut Registry<'_>,
    device: vfio_core::vfio::Fd,
    offset: u64,
    count: usize,
) -> Option<Allowances> {
    vfio.with_device(device, |_, state| {
        let config = state.config();
        let first = offset;
        let last = offset + count.max(1) as u64 - 1;
        let touches = |lo: u64, hi: u64| first <= hi && last >= lo;
        let mut extra: Vec<(u64, u8)> = Vec::new();
        let mut rw1c: Vec<u64> = Vec::new();
        if touches(0x04, 0x07) {
            rw1c.extend(0x06..=0x07);
        }
        // The user's write is split into naturally aligned chunks; every
        // handler below keys on a chunk, so "the write touches" is the test.
        // §5.2 step 4 / §6.7: DisINTx follows the virtual bit (INTx mask/unmask).
        if touches(0x04, 0x05) {
            extra.push((0x05, 0x04));
        }
        for cap in config.capabilities() {
            // Write-1-to-clear status registers: the default write read-modify-writes
            // the whole chunk, writing back the 1s it read (the kernel does the same).
            for (lo, hi) in rw1c_registers(cap) {
                if touches(lo & !3, hi | 3) {
                    rw1c.extend(lo..=hi);
                }
            }
            if cap.len == 0 || matches!(cap.space, CapSpace::Extended) {
                continue;
            }
            let c = u64::from(cap.offset);
            match cap.id {
                // §6.1: a power-state write may save/restore the whole function.
                0x01 if touches(c + 4, c + 4) => return Ok(None),
                // §6.6: the VPD handshake drives the device's VPD registers.
                0x03 if touches(c + 3, c + 3) => extra.extend((2..8).map(|k| (c + k, 0xff))),
                // §6.4: Message Control (Enable, MME) is written to hardware.
                0x05 if touches(c, c + 2) => extra.push((c + 2, 0x71)),
                // §6.5: MaxReadReq is set through the platform.
                0x10 if touches(c + 8, c + 9) => extra.push((c + 9, 0x70)),
                _ => {}
            }
        }
        Ok(Some((extra, rw1c)))
    })
    .unwrap_or(None)
}

/// Bits of config byte `pos` the permission tables let the user change in
/// hardware: writable and not virtualized ([`BytePermission`]); every bit of a
/// raw byte; nothing past the config size.
pub fn table_mask(vfio: &mut Registry<'_>, device: vfio_core::vfio::Fd, pos: usize) -> u8 {
    vfio.with_device(device, |_, state| {
        let pos = u16::try_from(pos).unwrap_or(u16::MAX);
        Ok(match state.config().byte_permission(pos) {
            Some(BytePermission { raw: true, .. }) => 0xff,
            Some(p) => p.write & !p.virt,
            None => 0,
        })
    })
    .unwrap_or(0)
}

/// Write-1-to-clear status registers of capability `cap` (inclusive byte
/// ranges): PM Control/Status (PME_Status), PCIe Device/Link/Slot/Root Status,
/// AER status registers.
///
/// Known deviation, kept because the kernel behaves the same: the default
/// write read-modify-writes the physical chunk, so a 1 read in a RW1C bit the
/// tables mark non-writable is written back and clears it (see the ignored
/// `regression::rw1c_status_bits_survive_a_neighbouring_write`).
fn rw1c_registers(cap: &vfio_core::pci::CapEntry) -> Vec<(u64, u64)> {
    let c = u64::from(cap.offset);
    match (cap.space, cap.id) {
        (CapSpace::Standard, 0x01) => vec![(c + 0x05, c + 0x05)],
        (CapSpace::Standard, 0x10) => vec![
            (c + 0x0a, c + 0x0b),
            (c + 0x12, c + 0x13),
            (c + 0x1a, c + 0x1b),
            (c + 0x20, c + 0x23),
            (c + 0x2a, c + 0x2b),
            (c + 0x32, c + 0x33),
            (c + 0x3a, c + 0x3b),
        ],
        (CapSpace::Extended, 0x01) => vec![
            (c + 0x04, c + 0x07),
            (c + 0x10, c + 0x13),
            (c + 0x30, c + 0x33),
        ],
        _ => Vec::new(),
    }
}

/// Writes `data` at config `offset` through the device file and checks that no
/// physical bit outside the permission tables (and the documented special
/// handlers, see [`special_allowances`]) changed. BAR registers may only
/// return to their value at open (§5.3 BAR restore): `baseline` is the
/// physical config right after the device was opened.
///
/// A write that makes the device reset itself (FLR) reloads hardware state;
/// such writes are checked only for not panicking.
///
/// # Panics
/// When a non-writable physical bit changed.
pub fn checked_write(
    sim: &SimMachine,
    vfio: &mut Registry<'_>,
    device: vfio_core::vfio::Fd,
    baseline: &[u8],
    offset: u64,
    data: &[u8],
) {
    let before = physical_config(sim);
    let allowances = special_allowances(vfio, device, offset, data.len());
    let resets = sim.reset_count(primary_bdf());
    let _ = vfio.device_write(device, CONFIG_REGION + offset, data);
    let after = physical_config(sim);
    let Some((extra, rw1c)) = allowances else {
        return;
    };
    if sim.reset_count(primary_bdf()) != resets || before == after {
        return;
    }
    for (pos, (&b, &a)) in before.iter().zip(&after).enumerate() {
        if a == b {
            continue;
        }
        let bar = (0x10..0x28).contains(&pos) || (0x30..0x34).contains(&pos);
        if bar && baseline.get(pos) == Some(&a) {
            continue;
        }
        let mut mask = table_mask(vfio, device, pos);
        for &(at, bits) in &extra {
            if at == pos as u64 {
                mask |= bits;
            }
        }
        let mut changed = (a ^ b) & !mask;
        if rw1c.contains(&(pos as u64)) {
            // Only clearing is allowed there.
            changed &= a;
        }
        assert!(
            changed == 0,
            "write of {data:02x?} at {offset:#x} changed physical byte {pos:#x} \
             from {b:#04x} to {a:#04x}; writable-physical mask {mask:#04x}"
        );
    }
}

/// Opens the corpus image picked by the first two bytes and runs the config
/// accesses encoded in the rest: 8 bytes each (offset `u16`, width selector,
/// value `u32`, read/write selector).
///
/// Checks after every access: reads return at most the requested bytes and
/// change no physical bit; every write obeys [`checked_write`]; the
/// machine-wide invariants of [`check_machine`].
///
/// # Panics
/// When a check fails.
pub fn config_access(data: &[u8]) {
    let functions = corpus_functions();
    if functions.is_empty() {
        return;
    }
    let mut input = Cursor::new(data);
    let (_, function) = &functions[usize::from(input.u16()) % functions.len()];
    run_image(function.clone(), &mut input);
}

/// The body of [`config_access`] for one image.
pub fn run_image(function: vfio_sim::SimFunction, input: &mut Cursor<'_>) {
    let Some(sim) = single_function_machine(function) else {
        return;
    };
    with_registry(&sim, |vfio, registered| {
        let Some(handles) = assign_first(vfio, registered) else {
            return;
        };
        let baseline = physical_config(&sim);
        let size = baseline.len().max(1) as u64;
        let mut steps = 0;
        while !input.is_empty() && steps < 256 {
            steps += 1;
            let offset = u64::from(input.u16()) % (size + 8);
            let len = match input.u8() % 8 {
                0 => 1,
                1 | 2 => 2,
                3..=5 => 4,
                6 => 8,
                n => usize::from(n),
            };
            let value = input.u32();
            let bytes: Vec<u8> = value
                .to_le_bytes()
                .iter()
                .cycle()
                .take(len)
                .copied()
                .collect();
            if input.one_in(4) {
                let before = physical_config(&sim);
                let mut buf = vec![0u8; len];
                if let Ok(n) = vfio.device_read(handles.device, CONFIG_REGION + offset, &mut buf) {
                    assert!(n <= len, "read returned more than asked");
                }
                assert_eq!(
                    before,
                    physical_config(&sim),
                    "a config read changed hardware"
                );
            } else {
                checked_write(&sim, vfio, handles.device, &baseline, offset, &bytes);
            }
            check_container(&sim, vfio, handles.container);
        }
    });
}
