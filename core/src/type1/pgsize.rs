//! Splitting a physically contiguous run into IOMMU pages (spec/02-type1.md §3, §6.3).
//!
//! The core hands the platform one [`crate::platform::Iommu::map`] call per maximal
//! physically contiguous run (spec/02-type1.md §6.3: an IOMMU whose minimum page is larger
//! than the host page would refuse page-sized calls). The platform then writes page-table
//! entries; [`decompose`] gives it the minimal list of them: at each step, the largest page
//! size of the domain's bitmap that fits in what is left and to which both the IOVA and
//! the physical address are aligned. A platform (a simulator's page tables, a bare-metal
//! IOMMU driver) uses it inside `Iommu::map`; `disable_hugepages` corresponds to a bitmap
//! reduced to its lowest bit.
//!
//! Why greedy is minimal: page sizes are powers of two. Let `a` be the alignment of the
//! current position (the largest power of two dividing both `iova` and `phys`, capped by
//! the remaining length rounded down to a page size). Any decomposition must cover the
//! current position with a page of size ≤ `a` (a larger page would be misaligned or too
//! long), and any page of size `p ≤ a` starting here leaves a position aligned to `p`; the
//! bytes `[pos, pos + a)` need at least one page per largest-fitting chunk whatever the
//! choice, so taking the largest possible page never increases the count. The property
//! test `tests/tests/type1_props.rs` checks this against a brute-force search.

/// Iterator over the `(iova, phys, page_size)` chunks of a run; see [`decompose`].
#[derive(Debug, Clone)]
pub struct Chunks {
    iova: u64,
    phys: u64,
    left: u64,
    bitmap: u64,
}

/// Decomposes the run `[iova, iova + len)` → `[phys, phys + len)` into the fewest chunks
/// whose sizes are in `pgsize_bitmap` (bit `n` = 2^n bytes) and which are each aligned to
/// their own size in both `iova` and `phys`, in ascending order.
///
/// Stops early (the chunks then cover less than `len`) when no page size fits: `iova`,
/// `phys` or `len` not a multiple of the smallest page size, an empty bitmap, or a run
/// that would wrap past 2^64 − 1. Never panics.
pub fn decompose(iova: u64, phys: u64, len: u64, pgsize_bitmap: u64) -> Chunks {
    Chunks {
        iova,
        phys,
        left: len,
        bitmap: pgsize_bitmap,
    }
}

impl Chunks {
    /// Bytes not covered by the chunks yielded so far.
    pub fn remaining(&self) -> u64 {
        self.left
    }
}

impl Iterator for Chunks {
    type Item = (u64, u64, u64);

    fn next(&mut self) -> Option<(u64, u64, u64)> {
        if self.left == 0 {
            return None;
        }
        // Sizes allowed by alignment: every power of two ≤ the lowest set bit of iova|phys
        // (any size when both are 0).
        let addr = self.iova | self.phys;
        let align_mask = if addr == 0 {
            u64::MAX
        } else {
            let low = addr & addr.wrapping_neg();
            low | low.wrapping_sub(1)
        };
        // Sizes allowed by the length: every power of two ≤ left.
        let top = 1u64 << (63 - self.left.leading_zeros());
        let len_mask = top | top.wrapping_sub(1);
        let candidates = self.bitmap & align_mask & len_mask;
        if candidates == 0 {
            return None;
        }
        let size = 1u64 << (63 - candidates.leading_zeros());
        let chunk = (self.iova, self.phys, size);
        let (Some(iova), Some(phys)) = (self.iova.checked_add(size), self.phys.checked_add(size))
        else {
            // The chunk ends exactly at 2^64: yield it and stop.
            self.left = self.left.saturating_sub(size);
            if self.left != 0 {
                self.bitmap = 0;
            }
            return Some(chunk);
        };
        self.iova = iova;
        self.phys = phys;
        self.left -= size;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_the_largest_aligned_pages() {
        let bitmap = 0x4020_1000; // 4 KiB | 2 MiB | 1 GiB
        let chunks: std::vec::Vec<_> = decompose(0x1ff000, 0x1ff000, 0x202000, bitmap).collect();
        assert_eq!(
            chunks,
            [
                (0x1ff000, 0x1ff000, 0x1000),
                (0x200000, 0x200000, 0x200000),
                (0x400000, 0x400000, 0x1000),
            ]
        );
        // Misaligned physical address: 4 KiB pages only.
        assert_eq!(decompose(0x200000, 0x201000, 0x200000, bitmap).count(), 512);
        // Not a multiple of the minimum page: stops.
        let mut c = decompose(0, 0, 0x800, bitmap);
        assert_eq!(c.next(), None);
        assert_eq!(c.remaining(), 0x800);
        // Reaching the top of the address space.
        let top: std::vec::Vec<_> = decompose(u64::MAX - 0xfff, 0, 0x1000, bitmap).collect();
        assert_eq!(top, [(u64::MAX - 0xfff, 0, 0x1000)]);
    }
}
