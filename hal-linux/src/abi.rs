// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Typed helpers over the byte-level VFIO ABI, as a VMM issues the ioctls: a structure is
//! laid out in a buffer of `argsz` bytes, the request is made, and the answer is decoded
//! from the same bytes.

use vfio_core::abi::Arg;
use vfio_core::platform::{HostMemory, Iommu};
use vfio_core::uapi;
use vfio_core::vfio::{BusDriver, Fd, Vfio};
use vfio_core::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Issues `request` with `value` laid out at the start of a zeroed buffer of
/// `max(argsz, size_of::<T>())` bytes; returns the buffer and the ioctl's result.
pub fn ioctl_buffer<T, I, M, D>(
    vfio: &mut Vfio<'_, I, M, D>,
    fd: Fd,
    request: u32,
    value: &T,
    argsz: usize,
) -> Result<(Vec<u8>, i64), Errno>
where
    T: IntoBytes + Immutable,
    I: Iommu,
    M: HostMemory,
    D: BusDriver,
{
    let bytes = value.as_bytes();
    let mut buf = vec![0u8; argsz.max(bytes.len())];
    buf[..bytes.len()].copy_from_slice(bytes);
    let ret = vfio.ioctl(fd, request, Arg::Buffer(&mut buf))?;
    Ok((buf, ret))
}

/// Decodes a `T` from the start of `buf` (zero-extended if `buf` is short).
pub fn decode<T: FromBytes + IntoBytes>(buf: &[u8]) -> T {
    let mut value = T::new_zeroed();
    let out = value.as_mut_bytes();
    let n = out.len().min(buf.len());
    out[..n].copy_from_slice(&buf[..n]);
    value
}

/// One capability of an info chain: id and payload bytes.
#[derive(Debug, Clone)]
pub struct InfoCap {
    /// Capability id (per-ioctl id space).
    pub id: u16,
    /// Bytes after the 8-byte header up to the next capability or the buffer end.
    pub payload: Vec<u8>,
}

/// Walks the capability chain starting at `cap_offset` (spec/01-core.md §3.2), bounded by
/// the buffer and by 64 hops.
pub fn caps(buf: &[u8], cap_offset: u32) -> Vec<InfoCap> {
    let mut out = Vec::new();
    let mut at = cap_offset as usize;
    while at != 0 && out.len() < 64 {
        let Some(header) = buf.get(at..at + 8) else {
            break;
        };
        let header: uapi::InfoCapHeader = decode(header);
        let end = if header.next as usize > at {
            (header.next as usize).min(buf.len())
        } else {
            buf.len()
        };
        out.push(InfoCap {
            id: header.id,
            payload: buf.get(at + 8..end).unwrap_or_default().to_vec(),
        });
        if header.next as usize <= at {
            break;
        }
        at = header.next as usize;
    }
    out
}

/// Reads a little-endian u32 at `at` of `bytes` (0 past the end).
pub fn le32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a little-endian u64 at `at` of `bytes` (0 past the end).
pub fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from(le32(bytes, at)) | (u64::from(le32(bytes, at + 4)) << 32)
}
