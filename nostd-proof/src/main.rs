// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Proof that `vfio-core` links into a freestanding binary: no std, no allocator.
//!
//! This is a `#![no_std] #![no_main]` executable for the host target
//! (x86_64-unknown-linux-gnu) linked with `-nostartfiles -nostdlib -static`
//! (see `.cargo/config.toml`). There is no libc: `_start` is ours, the process
//! exits through the raw `exit_group` system call, and `memcpy`/`memset`/
//! `memcmp`/`bcmp`/`memmove` come from [`mem`]. If anything in the dependency
//! graph pulled in `std` or `alloc`, the link would fail on missing libc or
//! `__rust_alloc` symbols.
//!
//! The checks use `vfio-core` for real (inputs go through
//! [`core::hint::black_box`] so the optimizer cannot fold them away) and the
//! exit status says which check failed: 0 means all passed. `build.sh` runs
//! the binary and reports its `size` as the core's footprint.
#![no_std]
#![no_main]
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("nostd-proof only has a start routine for x86_64 Linux (the host target)");

mod mem;
mod registry;

use core::hint::black_box;
use core::panic::PanicInfo;

use vfio_core::errno::Errno;
use vfio_core::platform::{Bdf, Width};
use vfio_core::uapi::{irq_set_flags, IrqSet};
use vfio_core::vfio::{validate_irq_set, CapChain};

/// Scratch space for the capability chain: a static buffer, as an embedder
/// without a heap would provide.
static mut CAP_SCRATCH: [u8; 64] = [0; 64];

/// Runs every check; returns 0 when all pass, otherwise the number of the
/// first failing check.
fn run() -> i32 {
    // 1. BDF parsing and formatting helpers.
    let bdf = Bdf::parse(black_box("0000:06:0d.0"));
    match bdf {
        Some(b) if b.bus == 6 && b.device == 0xd && b.function == 0 && b.devfn() == 0x68 => {}
        _ => return 1,
    }
    if Bdf::parse(black_box("06:20.0")).is_some() {
        return 2;
    }
    if Width::from_bytes(black_box(4)) != Some(Width::Dword) {
        return 3;
    }

    // 2. The generic VFIO_DEVICE_SET_IRQS header validator.
    let eventfd_trigger = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
    let good = black_box(IrqSet {
        argsz: 28,
        flags: eventfd_trigger,
        index: 2,
        start: 0,
        count: 2,
    });
    if validate_irq_set(&good, black_box(16), black_box(5)) != Ok(8) {
        return 4;
    }
    let short = black_box(IrqSet { argsz: 27, ..good });
    if validate_irq_set(&short, black_box(16), black_box(5)) != Err(Errno::EINVAL) {
        return 5;
    }
    let wrapping = black_box(IrqSet {
        start: 1,
        count: 0xffff_fffe,
        ..good
    });
    if validate_irq_set(&wrapping, black_box(16), black_box(5)) != Err(Errno::EINVAL) {
        return 6;
    }

    // 3. An info capability chain built in a static buffer.
    // SAFETY: `run` is called once, from `_start`, on the only thread; no other
    // reference to CAP_SCRATCH exists while this one lives.
    let scratch = unsafe { &mut *core::ptr::addr_of_mut!(CAP_SCRATCH) };
    let mut chain = CapChain::new(scratch);
    if chain.add(black_box(2), 1, black_box(&[1, 0, 0, 0, 2, 0, 0, 0])) != Ok(()) {
        return 7;
    }
    if chain.add(black_box(3), 1, black_box(&[0xaa; 4])) != Ok(()) {
        return 8;
    }
    let bytes = chain.as_bytes();
    if chain.len() != 32 || bytes.get(4..8) != Some(&16u32.to_le_bytes()[..]) {
        return 9;
    }
    if chain.add(1, 1, black_box(&[0; 64])) != Err(Errno::ENOMEM) || chain.len() != 32 {
        return 10;
    }

    // 4. Errno names (pulls the string table in, as a logging embedder would).
    if Errno::from_name(black_box("EINVAL")) != Some(Errno::EINVAL) {
        return 11;
    }

    // 5. The registry: containers, groups, devices, Type1 and the ioctl
    //    dispatcher over static tables (checks 20..).
    if let Err(step) = registry::run() {
        return step;
    }

    0
}

/// Terminates the process with `status` through the raw `exit_group` system
/// call (there is no libc to call `exit`).
fn exit(status: i32) -> ! {
    // SAFETY: syscall 231 (exit_group) takes one integer argument and never
    // returns; it touches no memory of ours.
    unsafe {
        core::arch::asm!(
            "syscall",
            in("rax") 231usize,
            in("rdi") status as isize,
            options(noreturn, nostack),
        )
    }
}

/// Rust-level entry, called by [`_start`] with a 16-byte aligned stack.
extern "C" fn rust_start() -> ! {
    exit(run())
}

/// Process entry point (the ELF entry symbol the linker looks for).
///
/// At entry `rsp` points at `argc` and is 16-byte aligned, but no return
/// address was pushed, so the stack is not laid out as a normal `extern "C"`
/// function expects. This naked shim clears the frame pointer, re-aligns the
/// stack and calls [`rust_start`].
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "xor ebp, ebp",
        "and rsp, -16",
        "call {entry}",
        "ud2",
        entry = sym rust_start,
    )
}

/// Panics abort the process with status 101 (`panic = "abort"` in both
/// profiles, so no unwinding machinery is linked).
#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    exit(101)
}
