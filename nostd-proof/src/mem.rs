// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The C memory routines LLVM emits calls to: `memcpy`, `memmove`, `memset`,
//! `memcmp` and `bcmp`.
//!
//! On the host target `compiler_builtins` is built without its `mem` feature
//! (libc normally provides these), so a `-nostdlib` link needs them from us.
//! The copy and fill routines use `rep movsb` / `rep stosb` in inline assembly
//! so that LLVM cannot turn them back into calls to themselves; the compare
//! routines are plain byte loops (LLVM has no idiom that rewrites a compare
//! loop into a `memcmp` call).

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest`; the ranges must not overlap.
///
/// # Safety
/// `src` must be valid for `n` byte reads and `dest` for `n` byte writes, and
/// the two ranges must not overlap (the C contract).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes. The
    // direction flag is clear per the System V ABI, so `rep movsb` copies
    // forwards from rsi to rdi, rcx times.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// `src` must be valid for `n` byte reads and `dest` for `n` byte writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src, or at least n bytes above it: a forward copy
        // never reads a byte it has already overwritten.
        // SAFETY: same contract as ours, and the forward copy is overlap-safe
        // in this direction.
        return unsafe { memcpy(dest, src, n) };
    }
    // dest overlaps the tail of src: copy backwards with the direction flag set.
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes;
    // `n > 0` here (otherwise the first branch is taken), so `n - 1` does not
    // wrap. rsi/rdi start at the last byte and `std` makes `rep movsb` walk
    // downwards; `cld` restores the ABI-required clear direction flag.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        );
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
/// `dest` must be valid for `n` byte writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes; `rep stosb`
    // stores al to [rdi] forwards, rcx times (direction flag clear per ABI).
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// Compares `n` bytes; negative, zero or positive like C `memcmp`.
///
/// # Safety
/// `a` and `b` must be valid for `n` byte reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes at a and b.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality only: zero when equal.
///
/// # Safety
/// `a` and `b` must be valid for `n` byte reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
