//! IOMMU model: per-group domain profiles and per-domain I/O page tables.
//!
//! A [`PageTable`] holds page table entries (PTEs) of the sizes the domain supports
//! (`pgsize_bitmap`): `map` splits a range into the largest pages that alignment allows,
//! as Linux `iommu_map` does; `unmap` removes whole PTEs and, like ARM's io-pgtable,
//! splits a larger page that the range only partly covers so exactly the requested
//! bytes go away.

use std::collections::BTreeMap;

use vfio_core::platform::{Prot, ReservedKind, ReservedRegion};
use vfio_core::Errno;

/// IOMMU properties of one group: what a domain allocated for it looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupProfile {
    /// Identity of the IOMMU driver (domains are shared only between equal `ops`).
    pub ops: u32,
    /// Supported page sizes: bit `n` = 2^n bytes. Default `0x40201000` (4 KiB, 2 MiB,
    /// 1 GiB). Must be non-zero.
    pub pgsize_bitmap: u64,
    /// First translatable IOVA (inclusive). Default 0.
    pub aperture_start: u64,
    /// Last translatable IOVA (inclusive). Default `2^48 - 1`.
    pub aperture_end: u64,
    /// Reserved IOVA regions. Default: the x86 MSI window `[0xfee00000, 0xfeefffff]`.
    pub reserved: Vec<ReservedRegion>,
    /// Interrupt remapping available (MSIs can be isolated). Default true.
    pub intr_remap: bool,
    /// Domains can enforce cache coherency. Default true.
    pub enforce_coherency: bool,
    /// The group has no hardware IOMMU (mdev-style); no domain can be allocated for it.
    /// Default false.
    pub emulated: bool,
}

impl Default for GroupProfile {
    fn default() -> GroupProfile {
        GroupProfile {
            ops: 1,
            pgsize_bitmap: 0x4020_1000,
            aperture_start: 0,
            aperture_end: (1 << 48) - 1,
            reserved: vec![ReservedRegion {
                start: 0xfee0_0000,
                end: 0xfeef_ffff,
                kind: ReservedKind::Msi,
            }],
            intr_remap: true,
            enforce_coherency: true,
            emulated: false,
        }
    }
}

/// One page table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pte {
    /// Page size in bytes (one bit of the domain's `pgsize_bitmap`).
    pub size: u64,
    /// Physical address of the page.
    pub phys: u64,
    /// Access the device has.
    pub prot: Prot,
}

/// An I/O page table: IOVA of each page → its entry. Pages never overlap.
///
/// Models what the Type1 backend asks of `Iommu::map`/`unmap`/`iova_to_phys` (spec
/// 02-type1 §6.3 pin-and-map, §7 `VFIO_IOMMU_UNMAP_DMA`). Addresses and lengths are
/// bytes; a page size is one bit of the domain's `pgsize_bitmap` (bit `n` = 2^n bytes).
#[derive(Debug, Clone, Default)]
pub struct PageTable {
    ptes: BTreeMap<u64, Pte>,
}

impl PageTable {
    /// Number of PTEs (pages of any size), not bytes.
    pub fn len(&self) -> usize {
        self.ptes.len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.ptes.is_empty()
    }

    /// Total bytes mapped (sum of the PTE sizes; saturates at `u64::MAX`). One step per
    /// PTE: for reports, not hot paths.
    pub fn mapped_bytes(&self) -> u64 {
        self.ptes
            .values()
            .fold(0u64, |a, p| a.saturating_add(p.size))
    }

    /// Iterates `(iova, pte)` in ascending IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Pte)> + '_ {
        self.ptes.iter().map(|(k, v)| (*k, *v))
    }

    /// The PTE covering byte `iova` and the IOVA its page starts at; `None` when `iova`
    /// is unmapped. One B-tree descent.
    pub fn lookup(&self, iova: u64) -> Option<(u64, Pte)> {
        let (&start, &pte) = self.ptes.range(..=iova).next_back()?;
        (iova - start < pte.size).then_some((start, pte))
    }

    /// The physically contiguous translation from `iova`: `(phys, len)` with `len` the
    /// bytes (at most `max_len`, at least one byte) over which `[iova, iova + len)` maps
    /// to `[phys, phys + len)` through consecutive PTEs; `None` when `iova` is unmapped.
    /// One step per PTE.
    pub fn contiguous_run(&self, iova: u64, max_len: u64) -> Option<(u64, u64)> {
        let (start, pte) = self.lookup(iova)?;
        let offset = iova - start;
        let phys = pte.phys.checked_add(offset)?;
        let mut len = pte.size - offset;
        while len < max_len {
            let Some(next) = iova.checked_add(len) else {
                break;
            };
            match self.ptes.get(&next) {
                Some(p) if phys.checked_add(len) == Some(p.phys) => {
                    len = len.saturating_add(p.size);
                }
                _ => break,
            }
        }
        Some((phys, len.min(max_len).max(1)))
    }

    /// Byte `iova` → its physical address and the page's protection; `None` when
    /// unmapped (or, impossibly for a checked `map`, when the sum would wrap).
    pub fn translate(&self, iova: u64) -> Option<(u64, Prot)> {
        let (start, pte) = self.lookup(iova)?;
        Some((pte.phys.checked_add(iova - start)?, pte.prot))
    }

    fn overlaps(&self, first: u64, last: u64) -> bool {
        if self.lookup(first).is_some() {
            return true;
        }
        self.ptes.range(first..=last).next().is_some()
    }

    /// Largest supported page for the next chunk at `iova`/`phys` with `left` bytes: the
    /// highest bit of `pgsize_bitmap` that is at most `left` and to which both addresses
    /// are aligned (Linux `iommu_pgsize`), else the smallest supported page. Constant
    /// time (mask arithmetic, no loop over the bitmap). `pgsize_bitmap` must be non-zero.
    fn pick(pgsize_bitmap: u64, iova: u64, phys: u64, left: u64) -> u64 {
        // Sizes not above `left`: bits 0..=floor(log2(left)); none when `left` is 0.
        let fits = u64::MAX.checked_shr(left.leading_zeros()).unwrap_or(0);
        // Sizes both addresses are aligned to: bits 0..=trailing_zeros (all for 0).
        let aligned = u64::MAX >> 63u32.saturating_sub((iova | phys).trailing_zeros());
        let sizes = pgsize_bitmap & fits & aligned;
        if sizes == 0 {
            1u64 << pgsize_bitmap.trailing_zeros()
        } else {
            1u64 << (63 - sizes.leading_zeros())
        }
    }

    /// Maps `[iova, iova + len)` → `[phys, phys + len)` with `prot`, using the largest
    /// pages of `profile_pgsizes` that alignment and length allow (Linux `iommu_map`).
    /// `aperture` is the domain's `(aperture_start, aperture_end)`, both inclusive.
    ///
    /// # Errors
    /// `EINVAL`: `len` is 0, `iova`/`phys`/`len` are not multiples of the minimum page
    /// size, `profile_pgsizes` is 0, either range wraps past 2^64, or the IOVA range leaves
    /// `[aperture_start, aperture_end]`; `EEXIST`: some byte of the IOVA range is already
    /// mapped. Nothing changes on error.
    pub fn map(
        &mut self,
        profile_pgsizes: u64,
        aperture: (u64, u64),
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        if profile_pgsizes == 0 || len == 0 {
            return Err(Errno::EINVAL);
        }
        let min = 1u64 << profile_pgsizes.trailing_zeros();
        if (iova | phys | len) & (min - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        phys.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        if iova < aperture.0 || last > aperture.1 {
            return Err(Errno::EINVAL);
        }
        if self.overlaps(iova, last) {
            return Err(Errno::EEXIST);
        }
        self.refill(profile_pgsizes, iova, phys, len, prot);
        Ok(())
    }

    /// Unmaps `[iova, iova + len)`: returns the bytes that were mapped inside the range
    /// (holes are skipped, not an error). A larger page partly inside the range is split
    /// into smaller pages first (as ARM io-pgtable does); its outside parts stay mapped.
    /// A range running past 2^64 is cut at `u64::MAX`. Returns 0, changing nothing, when
    /// `len` or `pgsize_bitmap` is 0 or `iova` or `len` is not a multiple of the minimum
    /// page size (the `Iommu::unmap` contract has no error value).
    pub fn unmap(&mut self, pgsize_bitmap: u64, iova: u64, len: u64) -> u64 {
        if pgsize_bitmap == 0 || len == 0 {
            return 0;
        }
        let min = 1u64 << pgsize_bitmap.trailing_zeros();
        if (iova | len) & (min - 1) != 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1);
        // Split boundary pages first.
        for edge in [Some(iova), last.checked_add(1)].into_iter().flatten() {
            if let Some((start, pte)) = self.lookup(edge) {
                if start != edge {
                    self.ptes.remove(&start);
                    let head = edge - start;
                    self.refill(pgsize_bitmap, start, pte.phys, head, pte.prot);
                    self.refill(
                        pgsize_bitmap,
                        edge,
                        pte.phys + head,
                        pte.size - head,
                        pte.prot,
                    );
                }
            }
        }
        let keys: Vec<u64> = self.ptes.range(iova..=last).map(|(k, _)| *k).collect();
        let mut total = 0u64;
        for k in keys {
            if let Some(p) = self.ptes.remove(&k) {
                total = total.saturating_add(p.size);
            }
        }
        total
    }

    /// Inserts PTEs for `[iova, iova + len)` → `[phys, phys + len)`, largest pages first
    /// (`pick`). Callers have checked that neither range wraps, that the
    /// range is free, and that `iova`, `phys` and `len` are multiples of the smallest
    /// page (so no page runs past `len`).
    fn refill(&mut self, bitmap: u64, iova: u64, phys: u64, len: u64, prot: Prot) {
        let mut done = 0u64;
        while done < len {
            let (i, p) = (iova + done, phys + done);
            let size = Self::pick(bitmap, i, p, len - done);
            self.ptes.insert(
                i,
                Pte {
                    size,
                    phys: p,
                    prot,
                },
            );
            done = done.saturating_add(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PageTable;

    /// The definition `pick` computes in closed form: the largest supported size that
    /// fits `left` and both alignments, else the smallest supported size.
    fn pick_by_scan(bitmap: u64, iova: u64, phys: u64, left: u64) -> u64 {
        let mut best = 1u64 << bitmap.trailing_zeros();
        for bit in 0..64 {
            let size = 1u64 << bit;
            if bitmap & size != 0 && size <= left && (iova | phys) & (size - 1) == 0 {
                best = best.max(size);
            }
        }
        best
    }

    #[test]
    fn pick_matches_the_scan() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let bitmaps = [0x4020_1000, 1, 1 << 63, u64::MAX, 0x8000_0000_0000_1000];
        for _ in 0..20_000 {
            let bitmap = bitmaps[next() as usize % bitmaps.len()] | (next() & next());
            let shift = |v: u64, n: u64| v << (n % 64);
            let iova = shift(next(), next()) & next();
            let phys = [0, u64::MAX, shift(1, next())][(next() % 3) as usize] & next();
            let left = [
                0,
                1,
                u64::MAX,
                next(),
                shift(1, next()),
                next() >> (next() % 64),
            ][(next() % 6) as usize];
            assert_eq!(
                PageTable::pick(bitmap, iova, phys, left),
                pick_by_scan(bitmap, iova, phys, left),
                "bitmap {bitmap:#x} iova {iova:#x} phys {phys:#x} left {left:#x}"
            );
        }
    }
}
