//! The Type1 IOMMU backend (spec/02-type1.md): one instance per container with
//! `VFIO_SET_IOMMU(TYPE1 | TYPE1v2)`.
//!
//! The instance tracks DMA entries in a [`DmaMap`] (embedder storage, kept by the
//! container slot), the container's IOMMU domains, the valid IOVA list and the entry
//! budget, and programs every domain through [`Iommu`]. Host memory is pinned and charged
//! through [`HostMemory`]. Every multi-step operation rolls back completely on failure.

pub mod charge;
pub mod dma_map;
pub mod iova_list;
pub mod pgsize;

use heapless::Vec;

pub use charge::{ChargeRun, ChargeRuns};
pub use dma_map::{DmaEntry, DmaMap, EntryId, IovaRange, Iter, Mapping, Mappings};
pub use iova_list::{IovaList, MAX_IOVA_RANGES};
pub use pgsize::decompose;

use crate::errno::{Errno, Error as _, Result};
use crate::platform::{DomainId, DomainInfo, GroupId, HostMemory, Iommu, MemoryKind, Prot};
use crate::uapi::{dma_map_flags, dma_unmap_flags, extension};

/// Maximum IOMMU domains per container (one per incompatible IOMMU flavour).
pub const MAX_DOMAINS: usize = 8;
/// Maximum groups per domain, and emulated groups per container.
pub const MAX_GROUPS: usize = 16;
/// The kernel's default `dma_entry_limit` (`U16_MAX`, spec/02-type1.md §1.1).
pub const DEFAULT_DMA_ENTRY_LIMIT: u32 = 65535;
/// `max_dirty_bitmap_size` reported by the MIGRATION capability: 256 MiB.
pub const MAX_DIRTY_BITMAP_SIZE: u64 = 0x1000_0000;

/// Type1 info capability ids (type1-info id space, spec/02-type1.md §9.2).
pub mod info_cap {
    /// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
    pub const IOVA_RANGE: u16 = 1;
    /// `VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION`.
    pub const MIGRATION: u16 = 2;
    /// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`.
    pub const DMA_AVAIL: u16 = 3;
}

/// `struct vfio_iommu_type1_info` flags.
pub mod info_flags {
    /// `iova_pgsizes` is valid (always).
    pub const PGSIZES: u32 = 1 << 0;
    /// Capabilities follow.
    pub const CAPS: u32 = 1 << 1;
}

/// Embedder configuration of Type1 (Linux module parameters), sampled at `SET_IOMMU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type1Config {
    /// Maximum entries per container (kernel default 65535); further MAPs fail `ENOSPC`.
    pub dma_entry_limit: u32,
    /// Attach groups whose MSIs the platform cannot isolate (kernel default false).
    pub allow_unsafe_interrupts: bool,
    /// Which kernel's behaviour to reproduce where kernels differ.
    pub era: crate::Era,
    /// Exact locked-memory accounting (an extension, default false): a host page pinned
    /// by several entries of the container is charged once, and un-charged when the last
    /// of them goes; the limit check and the rollback are as in kernel mode
    /// (spec/02-type1.md §8). Needs storage for the charged runs
    /// ([`DmaMap::with_accounting`], [`crate::vfio::ContainerSlot::with_accounting`]):
    /// without it `SET_IOMMU` (and any MAP or attach that would pin) fails `EINVAL`. A
    /// full run storage fails the MAP or attach with `ENOMEM`. In this mode
    /// [`Mapping::locked_pages`] is 0: charges belong to the container's physical runs
    /// ([`ChargeRuns`]), not to entries.
    pub exact_accounting: bool,
}

impl Default for Type1Config {
    fn default() -> Self {
        Type1Config {
            dma_entry_limit: DEFAULT_DMA_ENTRY_LIMIT,
            allow_unsafe_interrupts: false,
            era: crate::Era::Linux7_3,
            exact_accounting: false,
        }
    }
}

/// A `VFIO_IOMMU_MAP_DMA` request (spec/02-type1.md §6.1), all in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDma {
    /// `READ` 0x1, `WRITE` 0x2, `VADDR` 0x4 (`uapi::dma_map_flags`).
    pub flags: u32,
    /// Process virtual address of the first byte (a multiple of [`Type1::pgsize`]; `vaddr +
    /// size − 1` must not pass 2^64 − 1).
    pub vaddr: u64,
    /// Device address of the first byte (a multiple of [`Type1::pgsize`]; the entry covers
    /// `[iova, iova + size − 1]`, which must not pass 2^64 − 1).
    pub iova: u64,
    /// Length in bytes: > 0, a multiple of [`Type1::pgsize`].
    pub size: u64,
}

/// A `VFIO_IOMMU_UNMAP_DMA` request without dirty bitmap (spec/02-type1.md §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapDma {
    /// `GET_DIRTY_BITMAP` 0x1, `ALL` 0x2, `VADDR` 0x4 (`uapi::dma_unmap_flags`).
    pub flags: u32,
    /// First IOVA of the range, a multiple of [`Type1::pgsize`] (0 with `ALL`).
    pub iova: u64,
    /// Length in bytes: > 0 and a multiple of [`Type1::pgsize`], the range being `[iova,
    /// iova + size − 1]` (0 with `ALL`, which means `[0, 2^64 − 1]`).
    pub size: u64,
}

#[derive(Debug, Clone)]
struct Domain {
    info: DomainInfo,
    groups: Vec<GroupId, MAX_GROUPS>,
}

/// One Type1 backend instance (`struct vfio_iommu`).
#[derive(Debug)]
pub struct Type1 {
    v2: bool,
    config: Type1Config,
    domains: Vec<Domain, MAX_DOMAINS>,
    /// The ids of `domains`, in the same order (kept in step so that every MAP and UNMAP
    /// borrows them instead of collecting them).
    ids: Vec<DomainId, MAX_DOMAINS>,
    emulated: Vec<GroupId, MAX_GROUPS>,
    dma_avail: u32,
    pgsize_bitmap: u64,
    iova_list: IovaList,
    vaddr_invalid_count: u32,
    dirty_tracking: bool,
}

/// Largest number of pages one entry may have while dirty tracking is on (2^31 − 1,
/// spec/02-type1.md §6.2 M13, §10.2 P4).
const DIRTY_MAX_PAGES: u64 = (1 << 31) - 1;

/// `VFIO_IOMMU_DIRTY_PAGES` flags (spec/02-type1.md §10.1).
pub mod dirty_flags {
    /// Start tracking.
    pub const START: u32 = 1 << 0;
    /// Stop tracking.
    pub const STOP: u32 = 1 << 1;
    /// Report the dirty bitmap of a range.
    pub const GET_BITMAP: u32 = 1 << 2;
}

/// `bitmap` with sub-page sizes folded into `page_size` (spec/02-type1.md §3).
fn fold_bitmap(bitmap: u64, page_size: u64) -> u64 {
    let below = page_size.wrapping_sub(1);
    if bitmap & below != 0 {
        (bitmap & !below) | page_size
    } else {
        bitmap
    }
}

impl Type1 {
    /// Opens an instance for IOMMU type `kind` (spec/02-type1.md §2.1).
    ///
    /// # Errors
    /// `EINVAL` unless `kind` is 1 (v1), 3 (v2) or the retired 6 (v2).
    pub fn open(kind: u32, config: Type1Config, page_size: u64) -> Result<Type1> {
        let v2 = match kind {
            extension::TYPE1_IOMMU => false,
            extension::TYPE1V2_IOMMU | extension::TYPE1_NESTING_IOMMU => true,
            _ => return Err(Errno::EINVAL),
        };
        Ok(Type1 {
            v2,
            config,
            domains: Vec::new(),
            ids: Vec::new(),
            emulated: Vec::new(),
            dma_avail: config.dma_entry_limit,
            pgsize_bitmap: !page_size.wrapping_sub(1),
            iova_list: IovaList::new(),
            vaddr_invalid_count: 0,
            dirty_tracking: false,
        })
    }

    /// Answers `CHECK_EXTENSION` without an instance (spec/02-type1.md §2.2). In the
    /// Linux 6.1 era the retired nesting type (6) still answers 1 (DIFFERENCES.md A8).
    pub const fn check_extension_static(arg: u32, era: crate::Era) -> u32 {
        match arg {
            extension::TYPE1_IOMMU | extension::TYPE1V2_IOMMU | extension::UNMAP_ALL => 1,
            extension::TYPE1_NESTING_IOMMU if matches!(era, crate::Era::Linux6_1) => 1,
            _ => 0,
        }
    }

    /// Answers `CHECK_EXTENSION` for this instance (spec/02-type1.md §2.2): 1 or 0. The
    /// two instance-dependent answers are here (`DMA_CC_IOMMU`: every domain enforces
    /// coherency; `UPDATE_VADDR`: no emulated group), the rest as
    /// [`Type1::check_extension_static`] with the instance's era.
    pub fn check_extension(&self, arg: u32) -> u32 {
        match arg {
            extension::DMA_CC_IOMMU => {
                u32::from(self.domains.iter().all(|d| d.info.enforce_coherency))
            }
            extension::UPDATE_VADDR => u32::from(self.emulated.is_empty()),
            _ => Self::check_extension_static(arg, self.config.era),
        }
    }

    /// Whether the instance has v2 unmap semantics (opened as type 3 or 6, spec/02-type1.md
    /// §2.1, §7.4): an UNMAP whose range bisects an entry fails `EINVAL` (v1 skips or
    /// removes such an entry whole instead).
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The supported IOVA page sizes, reported as `iova_pgsizes` by GET_INFO
    /// (spec/02-type1.md §3): bit `n` set = 2^n bytes. With no domain, every power of two
    /// from the host page size up; otherwise the AND of the domains' bitmaps with sizes
    /// below the host page folded into it. 0 only when the domains share no page size.
    pub fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    /// The container's minimum IOMMU page size `pgsize` in bytes (the lowest set bit of
    /// [`Type1::pgsize_bitmap`], spec/02-type1.md §3): MAP, UNMAP and dirty bitmaps must be
    /// aligned to it. 0 only when the bitmap is 0.
    pub fn pgsize(&self) -> u64 {
        self.pgsize_bitmap & self.pgsize_bitmap.wrapping_neg()
    }

    /// `bytes` in pages of [`Type1::pgsize`], rounded down; `u64::MAX` when the pgsize is 0
    /// (domains sharing no page size), so that no input divides by zero: the dirty-page
    /// limit then refuses (`EINVAL`) and a bitmap report does not fit (`EFAULT`).
    fn pages_of(&self, bytes: u64) -> u64 {
        bytes.checked_div(self.pgsize()).unwrap_or(u64::MAX)
    }

    /// Whether exact accounting is on ([`Type1Config::exact_accounting`]).
    pub fn exact_accounting(&self) -> bool {
        self.config.exact_accounting
    }

    /// Checks that `map` can serve this instance: exact accounting needs run storage.
    ///
    /// # Errors
    /// `EINVAL` when exact accounting is on and `map` has no run storage.
    pub fn check_storage(&self, map: &DmaMap<'_>) -> Result<()> {
        if self.config.exact_accounting && map.accounting().is_none() {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// The runs of `map` when exact accounting is on.
    fn exact<'m, 's>(&self, map: &'m mut DmaMap<'s>) -> Option<&'m mut ChargeRuns<'s>> {
        if self.config.exact_accounting {
            map.accounting_mut()
        } else {
            None
        }
    }

    /// Takes the runs out of `map` when exact accounting is on (put them back with
    /// [`DmaMap::restore_accounting`]).
    fn take_exact<'s>(&self, map: &mut DmaMap<'s>) -> Option<ChargeRuns<'s>> {
        if self.config.exact_accounting {
            map.take_accounting()
        } else {
            None
        }
    }

    /// How many more entries may be created (`dma_avail`, spec/02-type1.md §1.1): starts
    /// at [`Type1Config::dma_entry_limit`], one less per MAP, one more per removed entry;
    /// a MAP at 0 fails `ENOSPC` (§6.2 M9).
    pub fn dma_avail(&self) -> u32 {
        self.dma_avail
    }

    /// Number of IOMMU domains (0 to [`MAX_DOMAINS`]; emulated groups have none).
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The domain `group` is attached to (spec/02-type1.md §5.1 step 11; `None` for
    /// emulated or unknown groups).
    pub fn domain_of(&self, group: GroupId) -> Option<DomainId> {
        self.domains
            .iter()
            .find(|d| d.groups.contains(&group))
            .map(|d| d.info.id)
    }

    /// The valid IOVA list (spec/02-type1.md §4): sorted, disjoint, inclusive byte ranges
    /// `[first, last]`, at most [`MAX_IOVA_RANGES`]; empty = unrestricted (no IOMMU-backed
    /// group yet).
    pub fn iova_list(&self) -> &IovaList {
        &self.iova_list
    }

    fn has_group(&self, group: GroupId) -> bool {
        self.emulated.contains(&group) || self.domains.iter().any(|d| d.groups.contains(&group))
    }

    fn domain_ids(&self) -> &[DomainId] {
        &self.ids
    }

    /// Refreshes `ids` after `domains` changed.
    fn sync_ids(&mut self) {
        self.ids = self.domains.iter().map(|d| d.info.id).collect();
    }

    fn recompute_pgsize(&mut self, page_size: u64) {
        let bitmap = self
            .domains
            .iter()
            .fold(u64::MAX, |acc, d| acc & d.info.pgsize_bitmap);
        self.pgsize_bitmap = fold_bitmap(bitmap, page_size);
    }

    /// Attaches `group` (spec/02-type1.md §5.1): allocates or shares a domain, updates the
    /// valid list and replays every entry into a new domain. On error the instance and the
    /// platform are exactly as before.
    ///
    /// # Errors
    /// `EBUSY` while a vaddr is invalidated; `EINVAL` for a group already attached, an
    /// aperture or reserved-region conflict, or an empty valid list; `EPERM` without
    /// interrupt isolation; `ENOMEM`/`EFAULT` from replay pinning; platform errors.
    pub fn attach_group<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
        group: GroupId,
    ) -> Result<()> {
        if self.vaddr_invalid_count > 0 {
            return Err(Errno::EBUSY);
        }
        if self.has_group(group) {
            return Err(Errno::EINVAL);
        }
        let info = iommu.group_info(group).ok_or(Errno::ENODEV)?;
        if info.emulated {
            return self.emulated.push(group).map_err(|_| Errno::ENOMEM);
        }
        if self.domains.is_full() {
            return Err(Errno::ENOMEM);
        }
        let domain = iommu.domain_alloc(group).map_err(|e| e.errno())?;
        if let Err(e) = iommu.attach(domain.id, group) {
            iommu.domain_free(domain.id);
            return Err(e.errno());
        }
        let undo_new = |iommu: &mut I| {
            iommu.detach(domain.id, group);
            iommu.domain_free(domain.id);
        };
        let list = match iova_list::after_attach(
            &self.iova_list,
            map,
            iommu,
            group,
            domain.aperture_start,
            domain.aperture_end,
        ) {
            Ok(list) => list,
            Err(e) => {
                undo_new(iommu);
                return Err(e);
            }
        };
        if !info.intr_remap && !self.config.allow_unsafe_interrupts {
            undo_new(iommu);
            return Err(Errno::EPERM);
        }
        // Step 11: share an existing compatible domain.
        for index in 0..self.domains.len() {
            let existing = self.domains[index].info;
            if existing.ops != domain.ops || existing.enforce_coherency != domain.enforce_coherency
            {
                continue;
            }
            iommu.detach(domain.id, group);
            if iommu.attach(existing.id, group).is_ok() {
                if self.domains[index].groups.push(group).is_err() {
                    iommu.detach(existing.id, group);
                    iommu.domain_free(domain.id);
                    return Err(Errno::ENOMEM);
                }
                iommu.domain_free(domain.id);
                self.iova_list = list;
                return Ok(());
            }
            if let Err(e) = iommu.attach(domain.id, group) {
                iommu.domain_free(domain.id);
                return Err(e.errno());
            }
        }
        // Step 13: replay every entry into the new domain.
        if let Err(e) = self.replay(map, iommu, memory, domain.id) {
            undo_new(iommu);
            return Err(e);
        }
        let mut groups = Vec::new();
        // Capacity ≥ 1: cannot fail.
        let _ = groups.push(group);
        // `is_full` was checked above: cannot fail.
        let _ = self.domains.insert(
            0,
            Domain {
                info: domain,
                groups,
            },
        );
        self.sync_ids();
        self.recompute_pgsize(memory.page_size());
        self.iova_list = list;
        Ok(())
    }

    /// Maps every entry into `new` (spec/02-type1.md §5.1 step 13), in ascending IOVA
    /// order; on error everything this replay mapped, pinned or charged is undone.
    fn replay<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
        new: DomainId,
    ) -> Result<()> {
        self.check_storage(map)?;
        let mut runs = self.take_exact(map);
        let result = self.replay_with(map, runs.as_mut(), iommu, memory, new);
        map.restore_accounting(runs);
        result
    }

    /// [`Type1::replay`] with the exact-accounting runs taken out of `map`.
    fn replay_with<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        mut runs: Option<&mut ChargeRuns<'_>>,
        iommu: &mut I,
        memory: &mut M,
        new: DomainId,
    ) -> Result<()> {
        let source = self.domains.first().map(|d| d.info.id);
        let page = memory.page_size();
        map.set_page_size(page);
        let mut cursor = map.first_overlapping(IovaRange::ALL);
        let mut failure = None;
        while let Some(id) = cursor {
            let Some(mut entry) = map.get(id) else {
                break;
            };
            let step = match source {
                Some(src) if entry.iommu_mapped => {
                    copy_translations(iommu, src, new, entry.iova, entry.size, entry.prot, page)
                }
                _ => pin_and_map(iommu, memory, &[new], &entry, page, runs.as_deref_mut())
                    .and_then(|charged| {
                        entry.locked_pages = charged;
                        entry.iommu_mapped = true;
                        map.set(id, &entry).inspect_err(|_| {
                            unpin_entry(iommu, memory, &[new], &entry, page, runs.as_deref_mut());
                        })
                    }),
            };
            if let Err(e) = step {
                failure = Some((entry.iova, e));
                break;
            }
            cursor = map.next(id);
        }
        let Some((stop, error)) = failure else {
            return Ok(());
        };
        if source.is_some() {
            for entry in map.iter().take_while(|e| e.iova < stop) {
                iommu.unmap(new, entry.iova, entry.size);
            }
        } else {
            unmap_entries_from(map, iommu, memory, new, stop, runs);
        }
        Err(error)
    }

    /// Detaches `group` (spec/02-type1.md §5.2). Never fails. The caller releases the whole
    /// instance with [`Type1::release`] when this was the container's last group.
    pub fn detach_group<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
        group: GroupId,
    ) {
        if let Some(pos) = self.emulated.iter().position(|&g| g == group) {
            self.emulated.remove(pos);
            if self.emulated.is_empty() && self.domains.is_empty() {
                self.remove_all(map, iommu, memory);
            }
            return;
        }
        let Some(index) = self.domains.iter().position(|d| d.groups.contains(&group)) else {
            return;
        };
        let Some(domain) = self.domains.get_mut(index) else {
            return;
        };
        let domain_id = domain.info.id;
        iommu.detach(domain_id, group);
        if let Some(pos) = domain.groups.iter().position(|&g| g == group) {
            domain.groups.remove(pos);
        }
        let now_empty = domain.groups.is_empty();
        if self.dirty_tracking {
            // Only a flag changes: `set` cannot fail.
            let _ = map.update_all(|entry| entry.dirty_all = true);
        }
        let mut bounds = None;
        if now_empty {
            let page = memory.page_size();
            if self.domains.len() == 1 {
                if self.emulated.is_empty() {
                    self.remove_all(map, iommu, memory);
                } else {
                    let mut runs = self.take_exact(map);
                    // IOVAs are page aligned, so every entry starts below 2^64 − 1.
                    unmap_entries_from(map, iommu, memory, domain_id, u64::MAX, runs.as_mut());
                    map.restore_accounting(runs);
                }
            } else {
                for entry in map.iter() {
                    iommu.unmap(domain_id, entry.iova, entry.size);
                }
            }
            self.domains.remove(index);
            self.sync_ids();
            iommu.domain_free(domain_id);
            self.recompute_pgsize(page);
            let lo = self
                .domains
                .iter()
                .map(|d| d.info.aperture_start)
                .max()
                .unwrap_or(0);
            let hi = self
                .domains
                .iter()
                .map(|d| d.info.aperture_end)
                .min()
                .unwrap_or(u64::MAX);
            bounds = Some((lo, hi));
        }
        let remaining = self.domains.iter().flat_map(|d| d.groups.iter().copied());
        iova_list::after_detach(&mut self.iova_list, iommu, bounds, remaining);
    }

    /// Releases the instance (spec/02-type1.md §12.1): removes every entry, detaches every
    /// group and frees every domain.
    pub fn release<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
    ) {
        self.emulated.clear();
        self.remove_all(map, iommu, memory);
        for domain in self.domains.iter() {
            for &group in domain.groups.iter() {
                iommu.detach(domain.info.id, group);
            }
            iommu.domain_free(domain.info.id);
        }
        self.domains.clear();
        self.ids.clear();
        self.iova_list.clear();
    }

    /// Removes every entry in one in-order walk (O(n) + pages); returns the bytes removed.
    fn remove_all<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
    ) -> u64 {
        let ids = self.domain_ids();
        let page = memory.page_size();
        let mut total: u64 = 0;
        let mut count: u32 = 0;
        let mut invalid: u32 = 0;
        let mut runs = self.take_exact(map);
        map.drain(|entry| {
            unpin_entry(iommu, memory, ids, entry, page, runs.as_mut());
            total = total.wrapping_add(entry.size);
            count = count.saturating_add(1);
            invalid = invalid.saturating_add(u32::from(entry.vaddr_invalid));
        });
        map.restore_accounting(runs);
        self.vaddr_invalid_count = self.vaddr_invalid_count.saturating_sub(invalid);
        self.dma_avail = self.dma_avail.saturating_add(count);
        total
    }

    /// Removes `entry` (spec/02-type1.md §12.2): unmaps it from every domain, unpins and
    /// un-charges its pages, and returns its budget slot.
    fn remove_entry<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
        entry: &Mapping,
    ) {
        if map.remove(entry.iova).is_none() {
            return;
        }
        let runs = self.exact(map);
        self.release_entry(iommu, memory, entry, runs);
    }

    /// The accounting of [`Type1::remove_entry`] once `entry` is out of the map.
    fn release_entry<I: Iommu, M: HostMemory>(
        &mut self,
        iommu: &mut I,
        memory: &mut M,
        entry: &Mapping,
        runs: Option<&mut ChargeRuns<'_>>,
    ) {
        let page = memory.page_size();
        unpin_entry(iommu, memory, self.domain_ids(), entry, page, runs);
        if entry.vaddr_invalid {
            self.vaddr_invalid_count = self.vaddr_invalid_count.saturating_sub(1);
        }
        self.dma_avail = self.dma_avail.saturating_add(1);
    }

    /// The era's errno for an arithmetic wrap of a user range (spec/02-type1.md §15:
    /// `EOVERFLOW` from Linux 6.18 on, `EINVAL` before).
    fn wrap_errno(&self) -> Errno {
        if self.config.era.before(crate::Era::Linux7_3) {
            Errno::EINVAL
        } else {
            Errno::EOVERFLOW
        }
    }

    /// `IovaRange::new` with the era's errno for a wrap.
    fn user_range(&self, start: u64, len: u64) -> Result<IovaRange> {
        IovaRange::new(start, len).map_err(|e| {
            if e == Errno::EOVERFLOW {
                self.wrap_errno()
            } else {
                e
            }
        })
    }

    /// Validates the range of a `DIRTY_PAGES` `GET_BITMAP` request before the bitmap checks
    /// (spec/02-type1.md §10.2 P6).
    ///
    /// # Errors
    /// `EINVAL` for size 0; a wrap of `iova + size − 1` is `EOVERFLOW` (Linux 7.3) or
    /// `EINVAL` (Linux 6.1, which also refuses a range ending exactly at 2^64).
    pub fn check_bitmap_range(&self, iova: u64, size: u64) -> Result<IovaRange> {
        let range = self.user_range(iova, size)?;
        if self.config.era.before(crate::Era::Linux7_3) && range.last == u64::MAX {
            return Err(Errno::EINVAL);
        }
        Ok(range)
    }

    /// `VFIO_IOMMU_MAP_DMA` (spec/02-type1.md §6.2, checks M4–M13; M1–M2 are the ABI's).
    ///
    /// # Errors
    /// In the spec's order: `EINVAL` size 0; `EOVERFLOW` iova or vaddr wrap (`EINVAL` in
    /// the Linux 6.1 era); `EINVAL` prot/VADDR combination or misalignment;
    /// `ENOENT`/`EINVAL` for a bad VADDR update; `EEXIST` overlap; `ENOSPC` entry limit;
    /// `EINVAL` outside the valid ranges; `ENOMEM` storage full or locked-memory limit;
    /// `EFAULT` unbacked or read-only memory; platform map errors. On error nothing is
    /// mapped, pinned or charged.
    pub fn map_dma<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
        request: &MapDma,
    ) -> Result<()> {
        if request.flags & !(dma_map_flags::READ | dma_map_flags::WRITE | dma_map_flags::VADDR) != 0
        {
            return Err(Errno::EINVAL);
        }
        // M4 (size 0: `EINVAL`) and M5 (wrap) in one: `IovaRange::new` checks the size
        // first.
        let range = self.user_range(request.iova, request.size)?;
        self.user_range(request.vaddr, request.size)?;
        let mut prot = Prot::empty();
        if request.flags & dma_map_flags::READ != 0 {
            prot |= Prot::READ;
        }
        if request.flags & dma_map_flags::WRITE != 0 {
            prot |= Prot::WRITE;
        }
        let vaddr_update = request.flags & dma_map_flags::VADDR != 0;
        if prot.is_empty() != vaddr_update {
            return Err(Errno::EINVAL);
        }
        let mask = self.pgsize().wrapping_sub(1);
        if (request.size | request.iova | request.vaddr) & mask != 0 {
            return Err(Errno::EINVAL);
        }
        if vaddr_update {
            let id = map.first_overlapping(range).ok_or(Errno::ENOENT)?;
            let mut entry = map.get(id).ok_or(Errno::ENOENT)?;
            if !entry.vaddr_invalid || entry.iova != request.iova || entry.size != request.size {
                return Err(Errno::EINVAL);
            }
            entry.vaddr = request.vaddr;
            entry.vaddr_invalid = false;
            map.set(id, &entry)?;
            self.vaddr_invalid_count = self.vaddr_invalid_count.saturating_sub(1);
            return Ok(());
        }
        // One descent finds both the overlap (EEXIST) and the insertion point, which
        // stays valid below: nothing until `insert_at` changes the map.
        let mut vacancy = dma_map::Vacancy::new();
        if !map.vacancy(range, &mut vacancy) {
            return Err(Errno::EEXIST);
        }
        if self.dma_avail == 0 {
            return Err(Errno::ENOSPC);
        }
        if !iova_list::allows(&self.iova_list, range) {
            return Err(Errno::EINVAL);
        }
        let mut entry = Mapping {
            iova: request.iova,
            size: request.size,
            vaddr: request.vaddr,
            prot,
            iommu_mapped: false,
            vaddr_invalid: false,
            lock_cap: memory.lock_cap(),
            locked_pages: 0,
            dirty_all: false,
        };
        let page = memory.page_size();
        map.set_page_size(page);
        // M12: pin and map (only when the container has a domain).
        if !self.domains.is_empty() {
            self.check_storage(map)?;
            let ids = self.domain_ids();
            let runs = self.exact(map);
            entry.locked_pages = pin_and_map(iommu, memory, ids, &entry, page, runs)?;
            entry.iommu_mapped = true;
        }
        // M13 after M12: an entry too large for a dirty bitmap is refused only once it
        // has pinned (a pin failure wins), and its pages are released again.
        let too_dirty = self.dirty_tracking && self.pages_of(request.size) > DIRTY_MAX_PAGES;
        let inserted = if too_dirty {
            Err(Errno::EINVAL)
        } else {
            map.insert_at(&vacancy, &entry).map(|_| ())
        };
        if let Err(e) = inserted {
            let runs = self.exact(map);
            unpin_entry(iommu, memory, self.domain_ids(), &entry, page, runs);
            return Err(e);
        }
        self.dma_avail = self.dma_avail.saturating_sub(1);
        Ok(())
    }

    /// `VFIO_IOMMU_UNMAP_DMA` (spec/02-type1.md §7.2 U5–U11). Returns the number of bytes
    /// unmapped (or invalidated, with `VADDR`). With `GET_DIRTY_BITMAP`, `bitmap` is
    /// `(pgsize, buffer)`: the dirty bits of the removed entries are set in `buffer`
    /// relative to `request.iova` (spec/02-type1.md §10.3).
    ///
    /// Cost: O(log n) to find the first entry, then O(log n) per removed entry; `ALL` is
    /// one in-order walk, O(n).
    ///
    /// # Errors
    /// `EBUSY` VADDR with an emulated group; `EINVAL` misaligned iova/size, size 0, `ALL`
    /// with a non-zero iova or size, a dirty bitmap while tracking is off or with another
    /// page size, v2 bisection, double VADDR invalidation; `EOVERFLOW` range wrap (`EINVAL`
    /// in the Linux 6.1 era); `EFAULT` when `buffer` is too short for an entry's bits.
    pub fn unmap_dma<I: Iommu, M: HostMemory>(
        &mut self,
        map: &mut DmaMap<'_>,
        iommu: &mut I,
        memory: &mut M,
        request: &UnmapDma,
        mut bitmap: Option<(u64, &mut [u8])>,
    ) -> Result<u64> {
        let all = request.flags & dma_unmap_flags::ALL != 0;
        let vaddr = request.flags & dma_unmap_flags::VADDR != 0;
        if vaddr && !self.emulated.is_empty() {
            return Err(Errno::EBUSY);
        }
        let mask = self.pgsize().wrapping_sub(1);
        if request.iova & mask != 0 {
            return Err(Errno::EINVAL);
        }
        let range = if all {
            if request.iova != 0 || request.size != 0 {
                return Err(Errno::EINVAL);
            }
            IovaRange::ALL
        } else {
            if request.size == 0 || request.size & mask != 0 {
                return Err(Errno::EINVAL);
            }
            self.user_range(request.iova, request.size)?
        };
        if request.flags & dma_unmap_flags::GET_DIRTY_BITMAP != 0 {
            let pgsize = bitmap.as_ref().map_or(0, |b| b.0);
            if !self.dirty_tracking || pgsize != self.pgsize() {
                return Err(Errno::EINVAL);
            }
        } else {
            bitmap = None;
        }
        // Fast path: a v1 or v2 UNMAP of exactly one whole entry (the usual case) passes
        // every check below and removes just that entry; one descent finds and removes it.
        // The range ending at 2^64 − 1 is left to the general path (era-specific rules).
        if !all && !vaddr && bitmap.is_none() && range.last != u64::MAX {
            if let Some(entry) = map.remove_exact(range) {
                let runs = self.exact(map);
                self.release_entry(iommu, memory, &entry, runs);
                return Ok(entry.size);
            }
        }
        let first = map.first_overlapping(range);
        let first_entry = first.and_then(|id| map.get(id));
        if self.v2 && !all {
            if let Some(entry) = first_entry {
                if entry.iova < range.first {
                    return Err(Errno::EINVAL);
                }
            }
        }
        // Linux 6.1 computes the end as `iova + size`, which is 0 for a range ending
        // exactly at 2^64: after the start check nothing is found (DIFFERENCES.md A5).
        if !all && range.last == u64::MAX && self.config.era.before(crate::Era::Linux7_3) {
            return Ok(0);
        }
        if self.v2 && !all {
            let end_entry = match first_entry {
                Some(e) if e.range().last >= range.last => Some(e),
                _ => map.find(range.last).and_then(|id| map.get(id)),
            };
            if let Some(entry) = end_entry {
                if entry.iova <= range.last && entry.range().last != range.last {
                    return Err(Errno::EINVAL);
                }
            }
        }
        let (Some(first), Some(first_entry)) = (first, first_entry) else {
            return Ok(0);
        };
        if !self.v2 && first_entry.iova < range.first {
            return Ok(0);
        }
        if vaddr {
            return self.invalidate_vaddrs(map, first, range);
        }
        if all && bitmap.is_none() {
            return Ok(self.remove_all(map, iommu, memory));
        }
        let mut total: u64 = 0;
        let mut next = Some(first_entry);
        while let Some(mut entry) = next {
            if entry.iova > range.last {
                break;
            }
            if let Some((_, buffer)) = bitmap.as_mut() {
                self.report_dirty(&mut entry, range.first, buffer)?;
            }
            total = total.wrapping_add(entry.size);
            self.remove_entry(map, iommu, memory, &entry);
            next = match entry.range().last.checked_add(1) {
                Some(from) if from <= range.last => map
                    .first_overlapping(IovaRange {
                        first: from,
                        last: range.last,
                    })
                    .and_then(|id| map.get(id)),
                _ => None,
            };
        }
        Ok(total)
    }

    /// The `VADDR` walk of UNMAP (spec/02-type1.md §11.1) from entry `first`: marks every
    /// entry starting in `range` invalid, or restores them all on a double invalidation.
    fn invalidate_vaddrs(
        &mut self,
        map: &mut DmaMap<'_>,
        first: EntryId,
        range: IovaRange,
    ) -> Result<u64> {
        let mut total: u64 = 0;
        let mut cursor = Some(first);
        let mut failed_at = None;
        while let Some(id) = cursor {
            let Some(mut entry) = map.get(id) else {
                break;
            };
            if entry.iova > range.last {
                break;
            }
            if entry.vaddr_invalid {
                failed_at = Some(entry.iova);
                break;
            }
            entry.vaddr_invalid = true;
            map.set(id, &entry)?;
            self.vaddr_invalid_count = self.vaddr_invalid_count.saturating_add(1);
            total = total.wrapping_add(entry.size);
            cursor = map.next(id);
        }
        let Some(stop) = failed_at else {
            return Ok(total);
        };
        let mut cursor = Some(first);
        while let Some(id) = cursor {
            let Some(mut entry) = map.get(id) else {
                break;
            };
            if entry.iova >= stop {
                break;
            }
            entry.vaddr_invalid = false;
            map.set(id, &entry)?;
            self.vaddr_invalid_count = self.vaddr_invalid_count.saturating_sub(1);
            cursor = map.next(id);
        }
        Err(Errno::EINVAL)
    }

    /// Sets the dirty bits of `entry` in `buffer` (bit k = page `start + k × pgsize`) and
    /// resets the entry's dirty state (spec/02-type1.md §10.3).
    fn report_dirty(&self, entry: &mut Mapping, start: u64, buffer: &mut [u8]) -> Result<()> {
        let iommu_dirty = entry.iommu_mapped && self.non_pinned_groups() > 0;
        if iommu_dirty || entry.dirty_all {
            let first = self.pages_of(entry.iova.saturating_sub(start));
            let pages = self.pages_of(entry.size);
            set_bits(buffer, first, pages)?;
        }
        entry.dirty_all = false;
        Ok(())
    }

    /// IOMMU-backed groups, which may dirty any mapped page (spec/02-type1.md §10.4).
    fn non_pinned_groups(&self) -> usize {
        self.domains.iter().map(|d| d.groups.len()).sum()
    }

    /// Whether dirty page tracking is on (`DIRTY_PAGES` `START` .. `STOP`,
    /// spec/02-type1.md §10.2).
    pub fn dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` with `START` or `STOP` (spec/02-type1.md §10.2 P1, P4, P5).
    ///
    /// # Errors
    /// `EACCES` on a v1 instance; `EINVAL` when `START` finds an entry of more than
    /// 2^31 − 1 pages, or `flags` is not exactly `START` or `STOP`.
    pub fn dirty_pages_control(&mut self, map: &mut DmaMap<'_>, flags: u32) -> Result<()> {
        if !self.v2 {
            return Err(Errno::EACCES);
        }
        match flags {
            dirty_flags::START => {
                if self.dirty_tracking {
                    return Ok(());
                }
                if map.iter().any(|e| self.pages_of(e.size) > DIRTY_MAX_PAGES) {
                    return Err(Errno::EINVAL);
                }
                map.update_all(|entry| entry.dirty_all = false)?;
                self.dirty_tracking = true;
                Ok(())
            }
            dirty_flags::STOP => {
                self.dirty_tracking = false;
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` with `GET_BITMAP` after the ABI checks (spec/02-type1.md
    /// §10.2 P6 from the page-size check on): writes the dirty bits of every entry starting
    /// in `[iova, iova + size − 1]` into `buffer`. Entries may be of any size (GiB ranges:
    /// bit indexes are u64).
    ///
    /// # Errors
    /// `EACCES` on v1; `EINVAL` for a bitmap page size other than the container's, a
    /// misaligned range, tracking off, or a range that bisects an entry; `EOVERFLOW` range
    /// wrap; `EFAULT` when `buffer` is too short.
    pub fn dirty_bitmap(
        &self,
        map: &mut DmaMap<'_>,
        iova: u64,
        size: u64,
        bitmap_pgsize: u64,
        buffer: &mut [u8],
    ) -> Result<()> {
        if !self.v2 {
            return Err(Errno::EACCES);
        }
        let range = self.check_bitmap_range(iova, size)?;
        let pgsize = self.pgsize();
        if bitmap_pgsize != pgsize
            || (iova | size) & pgsize.wrapping_sub(1) != 0
            || !self.dirty_tracking
        {
            return Err(Errno::EINVAL);
        }
        let first = map.first_overlapping(range);
        if let Some(entry) = first.and_then(|id| map.get(id)) {
            if entry.iova < range.first {
                return Err(Errno::EINVAL);
            }
        }
        if let Some(entry) = map.find(range.last).and_then(|id| map.get(id)) {
            if entry.range().last != range.last {
                return Err(Errno::EINVAL);
            }
        }
        let mut cursor = first;
        while let Some(id) = cursor {
            let Some(mut entry) = map.get(id) else {
                break;
            };
            if entry.iova > range.last {
                break;
            }
            self.report_dirty(&mut entry, range.first, buffer)?;
            map.set(id, &entry)?;
            cursor = map.next(id);
        }
        Ok(())
    }

    /// Writes the `VFIO_IOMMU_GET_INFO` capability chain (spec/02-type1.md §9.2) into
    /// `chain`, with `next` offsets relative to the chain start, and returns `(flags,
    /// iova_pgsizes, chain length in bytes)`. Capabilities are padded to 8 bytes (Linux ≥
    /// 6.6) or packed (the Linux 6.1 era: IOVA_RANGE follows the 12-byte DMA_AVAIL
    /// directly).
    ///
    /// # Errors
    /// `ENOMEM` when `chain` is too small.
    pub fn info(&self, chain: &mut [u8]) -> Result<(u32, u64, usize)> {
        let pad = !self.config.era.before(crate::Era::Linux7_3);
        let mut writer = ChainWriter {
            buf: chain,
            len: 0,
            last: None,
            pad,
        };
        let mut migration = [0u8; 24];
        migration[8..16].copy_from_slice(&self.pgsize().to_le_bytes());
        migration[16..24].copy_from_slice(&MAX_DIRTY_BITMAP_SIZE.to_le_bytes());
        writer.add(info_cap::MIGRATION, &migration)?;
        writer.add(info_cap::DMA_AVAIL, &self.dma_avail.to_le_bytes())?;
        if !self.iova_list.is_empty() {
            let mut payload = [0u8; 8 + 16 * MAX_IOVA_RANGES];
            let n = self.iova_list.len();
            let count = u32::try_from(n).map_err(|_| Errno::ENOMEM)?;
            payload[0..4].copy_from_slice(&count.to_le_bytes());
            for (node, slot) in self.iova_list.iter().zip(payload[8..].chunks_exact_mut(16)) {
                slot[0..8].copy_from_slice(&node.first.to_le_bytes());
                slot[8..16].copy_from_slice(&node.last.to_le_bytes());
            }
            let used = payload.get(..8 + 16 * n).ok_or(Errno::ENOMEM)?;
            writer.add(info_cap::IOVA_RANGE, used)?;
        }
        Ok((
            info_flags::PGSIZES | info_flags::CAPS,
            self.pgsize_bitmap,
            writer.len,
        ))
    }
}

/// Builds a VFIO capability chain (header: u16 id, u16 version 1, u32 next).
struct ChainWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    last: Option<usize>,
    pad: bool,
}

impl ChainWriter<'_> {
    fn add(&mut self, id: u16, payload: &[u8]) -> Result<()> {
        let start = self.len;
        let raw = payload.len().checked_add(8).ok_or(Errno::ENOMEM)?;
        let size = if self.pad {
            raw.checked_add(7).ok_or(Errno::ENOMEM)? & !7
        } else {
            raw
        };
        let end = start.checked_add(size).ok_or(Errno::ENOMEM)?;
        let start_u32 = u32::try_from(start).map_err(|_| Errno::ENOMEM)?;
        let slot = self.buf.get_mut(start..end).ok_or(Errno::ENOMEM)?;
        slot.fill(0);
        slot[0..2].copy_from_slice(&id.to_le_bytes());
        slot[2..4].copy_from_slice(&1u16.to_le_bytes());
        slot[8..raw].copy_from_slice(payload);
        if let Some(prev) = self.last {
            if let Some(next) = self.buf.get_mut(prev + 4..prev + 8) {
                next.copy_from_slice(&start_u32.to_le_bytes());
            }
        }
        self.last = Some(start);
        self.len = end;
        Ok(())
    }
}

/// `pages` as a signed charge (saturating; page counts never reach 2^63).
fn to_i64(pages: u64) -> i64 {
    i64::try_from(pages).unwrap_or(i64::MAX)
}

/// Sets bits `[first, first + count)` of the little-endian u64-word bitmap `buffer`.
///
/// # Errors
/// `EFAULT` when the bits do not fit in `buffer`.
fn set_bits(buffer: &mut [u8], first: u64, count: u64) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let end = first.checked_add(count).ok_or(Errno::EFAULT)?;
    let last_byte = usize::try_from((end - 1) / 8).map_err(|_| Errno::EFAULT)?;
    if last_byte >= buffer.len() {
        return Err(Errno::EFAULT);
    }
    let mut bit = first;
    while bit < end {
        let byte = (bit / 8) as usize;
        if bit % 8 == 0 && end - bit >= 8 {
            let whole = ((end - bit) / 8) as usize;
            buffer[byte..byte + whole].fill(0xff);
            bit += (whole as u64) * 8;
        } else {
            buffer[byte] |= 1 << (bit % 8);
            bit += 1;
        }
    }
    Ok(())
}

/// Pins `entry`'s memory run by run and maps each run into every domain of `domains`
/// (spec/02-type1.md §6.3, §8). Returns the pages charged to the entry. With `runs` (exact
/// accounting), a page is charged only when no other pin of the container holds it, the
/// charge is recorded in `runs` instead, and 0 is returned. On error everything done here
/// is undone.
fn pin_and_map<I: Iommu, M: HostMemory>(
    iommu: &mut I,
    memory: &mut M,
    domains: &[DomainId],
    entry: &Mapping,
    page: u64,
    mut runs: Option<&mut ChargeRuns<'_>>,
) -> Result<u64> {
    let write = entry.prot.contains(Prot::WRITE);
    let mut done: u64 = 0;
    let mut charged: u64 = 0;
    let result = (|| -> Result<()> {
        while done < entry.size {
            let run = memory
                .pin(entry.vaddr + done, entry.size - done, write)
                .map_err(|e| e.errno())?;
            let len = run.len.min(entry.size - done);
            // A usable run is whole pages and does not wrap past physical 2^64 − 1.
            let last = match len
                .checked_sub(1)
                .and_then(|extra| run.phys.checked_add(extra))
            {
                Some(last) if len % page == 0 => last,
                _ => {
                    memory.unpin(run.phys, run.len);
                    return Err(Errno::EFAULT);
                }
            };
            if run.kind == MemoryKind::Ram {
                // Exact mode: the pages no pin holds yet, and the run slots adding needs
                // (one preview serves both the limit check and the add).
                let (pages, slots) = match runs.as_deref() {
                    Some(r) => r.preview(run.phys, last, page),
                    None => (len / page, 0),
                };
                let over_limit = !entry.lock_cap
                    && memory
                        .lock_limit_pages()
                        .is_some_and(|limit| memory.locked_pages().saturating_add(pages) > limit);
                let added = match runs.as_deref_mut() {
                    _ if over_limit => Err(Errno::ENOMEM),
                    Some(r) => r.add_previewed(run.phys, last, slots),
                    None => Ok(()),
                };
                if let Err(e) = added {
                    memory.unpin(run.phys, len);
                    return Err(e);
                }
                if runs.is_none() {
                    charged += pages;
                }
                memory.charge(to_i64(pages));
            }
            for (k, &domain) in domains.iter().enumerate() {
                if let Err(e) = iommu.map(
                    domain,
                    entry.iova + done,
                    run.phys,
                    len,
                    entry.prot | Prot::CACHE,
                ) {
                    for &undo in &domains[..k] {
                        iommu.unmap(undo, entry.iova + done, len);
                    }
                    // In kernel mode this run's pages stay in `charged`, which the
                    // rollback below un-charges with the others.
                    let ram_runs = match run.kind {
                        MemoryKind::Ram => runs.as_deref_mut(),
                        MemoryKind::Mmio => None,
                    };
                    unpin(memory, ram_runs, run.phys, len, page);
                    return Err(e.errno());
                }
            }
            done += len;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(charged),
        Err(e) => {
            if done > 0 {
                let span = (entry.iova, done, page);
                unmap_and_unpin(iommu, memory, domains, span, runs);
            }
            memory.charge(-to_i64(charged));
            Err(e)
        }
    }
}

/// Unpins `len` bytes from `phys`; with `runs` (exact accounting), drops the references
/// and un-charges the pages no other pin holds.
fn unpin<M: HostMemory>(
    memory: &mut M,
    runs: Option<&mut ChargeRuns<'_>>,
    phys: u64,
    len: u64,
    page: u64,
) {
    memory.unpin(phys, len);
    if let Some(r) = runs {
        let released = r.remove(phys, phys.saturating_add(len.saturating_sub(1)), page);
        memory.charge(-to_i64(released));
    }
}

/// Undoes what MAP did for `entry` (spec/02-type1.md §12.2): when it is IOMMU-mapped,
/// unmaps it from every domain of `domains` and unpins its pages ([`unmap_and_unpin`]),
/// then un-charges its `locked_pages` (0 in exact mode, where `runs` un-charges each host
/// page as its last reference goes). Never fails.
fn unpin_entry<I: Iommu, M: HostMemory>(
    iommu: &mut I,
    memory: &mut M,
    domains: &[DomainId],
    entry: &Mapping,
    page: u64,
    runs: Option<&mut ChargeRuns<'_>>,
) {
    if entry.iommu_mapped {
        unmap_and_unpin(iommu, memory, domains, (entry.iova, entry.size, page), runs);
    }
    if entry.locked_pages != 0 {
        memory.charge(-to_i64(entry.locked_pages));
    }
}

/// Removes from `domain` the pages of every IOMMU-mapped entry starting below IOVA
/// `stop`: unmaps, unpins and un-charges them, and marks the entries not IOMMU-mapped.
/// The entries themselves stay (replay rollback, spec/02-type1.md §5.1 step 13; last
/// domain leaving while emulated groups remain, §5.2 step 3). Never fails.
fn unmap_entries_from<I: Iommu, M: HostMemory>(
    map: &mut DmaMap<'_>,
    iommu: &mut I,
    memory: &mut M,
    domain: DomainId,
    stop: u64,
    mut runs: Option<&mut ChargeRuns<'_>>,
) {
    let page = memory.page_size();
    // Only flags and counts change: `set` cannot fail.
    let _ = map.update_all(|entry| {
        if entry.iova < stop && entry.iommu_mapped {
            unpin_entry(iommu, memory, &[domain], entry, page, runs.as_deref_mut());
            entry.locked_pages = 0;
            entry.iommu_mapped = false;
        }
    });
}

/// Unmaps `span = (iova, len, page)` from every domain and unpins the pages, finding them
/// through the first domain's translations (spec/02-type1.md §12.2). With `runs` (exact
/// accounting) the pages are also un-charged as their last reference goes; otherwise the
/// caller un-charges the entry's `locked_pages`.
fn unmap_and_unpin<I: Iommu, M: HostMemory>(
    iommu: &mut I,
    memory: &mut M,
    domains: &[DomainId],
    span: (u64, u64, u64),
    mut runs: Option<&mut ChargeRuns<'_>>,
) {
    let (iova, len, page) = span;
    let Some((&first, rest)) = domains.split_first() else {
        return;
    };
    for &domain in rest {
        iommu.unmap(domain, iova, len);
    }
    // The pinned pages, found through the first domain's translations one physically
    // contiguous run at a time; adjacent runs are unpinned together.
    let mut offset = 0;
    let mut run: Option<(u64, u64)> = None;
    while offset < len {
        let found = iommu.iova_to_phys_run(first, iova + offset, len - offset, page);
        let step = match found {
            Some((phys, n)) => {
                let n = n.min(len - offset);
                run = match run {
                    Some((start, m)) if start.checked_add(m) == Some(phys) => Some((start, m + n)),
                    Some((start, m)) => {
                        unpin(memory, runs.as_deref_mut(), start, m, page);
                        Some((phys, n))
                    }
                    None => Some((phys, n)),
                };
                n
            }
            None => page,
        };
        offset = offset.saturating_add(step.max(page));
    }
    if let Some((start, n)) = run {
        unpin(memory, runs, start, n, page);
    }
    iommu.unmap(first, iova, len);
}

/// Copies the translations of `[iova, iova + len)` from domain `src` into `dst` in
/// physically contiguous runs (replay of an already mapped entry). Rolls back on error.
fn copy_translations<I: Iommu>(
    iommu: &mut I,
    src: DomainId,
    dst: DomainId,
    iova: u64,
    len: u64,
    prot: Prot,
    page: u64,
) -> Result<()> {
    let mut offset = 0;
    while offset < len {
        let found = iommu.iova_to_phys_run(src, iova + offset, len - offset, page);
        let left = len - offset;
        let Some((phys, run)) = found.map(|(p, n)| (p, n.min(left).max(page.min(left)))) else {
            iommu.unmap(dst, iova, offset);
            return Err(Errno::EFAULT);
        };
        if let Err(e) = iommu.map(dst, iova + offset, phys, run, prot | Prot::CACHE) {
            if offset > 0 {
                iommu.unmap(dst, iova, offset);
            }
            return Err(e.errno());
        }
        offset += run;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno::ErrorType;
    use crate::platform::{GroupInfo, PinnedRun, ReservedRegion};

    /// One domain per group (`ops` = the group), identity translations, and a domain whose
    /// `map` fails on request.
    #[derive(Debug, Default)]
    struct TestIommu {
        next: DomainId,
        fail_map: Option<DomainId>,
    }

    impl ErrorType for TestIommu {
        type Error = Errno;
    }

    impl Iommu for TestIommu {
        fn group_info(&self, _group: GroupId) -> Option<GroupInfo> {
            Some(GroupInfo {
                emulated: false,
                intr_remap: true,
            })
        }
        fn group_viable(&self, _group: GroupId) -> bool {
            true
        }
        fn claim_dma_owner(&mut self, _group: GroupId) -> Result<()> {
            Ok(())
        }
        fn release_dma_owner(&mut self, _group: GroupId) {}
        fn domain_alloc(&mut self, group: GroupId) -> Result<DomainInfo> {
            self.next += 1;
            Ok(DomainInfo {
                id: self.next,
                ops: group,
                pgsize_bitmap: 0x1000,
                aperture_start: 0,
                aperture_end: u64::MAX,
                enforce_coherency: true,
            })
        }
        fn domain_free(&mut self, _domain: DomainId) {}
        fn attach(&mut self, _domain: DomainId, _group: GroupId) -> Result<()> {
            Ok(())
        }
        fn detach(&mut self, _domain: DomainId, _group: GroupId) {}
        fn reserved_region(&self, _group: GroupId, _index: usize) -> Option<ReservedRegion> {
            None
        }
        fn map(
            &mut self,
            domain: DomainId,
            _iova: u64,
            _phys: u64,
            _len: u64,
            _p: Prot,
        ) -> Result<()> {
            if self.fail_map == Some(domain) {
                return Err(Errno::EIO);
            }
            Ok(())
        }
        fn unmap(&mut self, _domain: DomainId, _iova: u64, len: u64) -> u64 {
            len
        }
        fn iova_to_phys(&self, _domain: DomainId, iova: u64) -> Option<u64> {
            Some(iova)
        }
        /// The identity translation is one contiguous run (whole pages, at most
        /// `max_len` rounded up to `page`).
        fn iova_to_phys_run(
            &self,
            _domain: DomainId,
            iova: u64,
            max_len: u64,
            page: u64,
        ) -> Option<(u64, u64)> {
            let pages = max_len.checked_add(page.checked_sub(1)?)? / page;
            Some((iova, pages.checked_mul(page)?))
        }
    }

    /// Pins `phys = vaddr` (or `phys` when set), counting pinned bytes and charged pages.
    #[derive(Debug, Default)]
    struct TestMemory {
        phys: Option<u64>,
        pinned: i64,
        locked: i64,
    }

    impl ErrorType for TestMemory {
        type Error = Errno;
    }

    impl HostMemory for TestMemory {
        fn page_size(&self) -> u64 {
            0x1000
        }
        fn pin(&mut self, vaddr: u64, len: u64, _write: bool) -> Result<PinnedRun> {
            self.pinned += len as i64;
            Ok(PinnedRun {
                phys: self.phys.unwrap_or(vaddr),
                len,
                kind: MemoryKind::Ram,
            })
        }
        fn unpin(&mut self, _phys: u64, len: u64) {
            self.pinned -= len as i64;
        }
        fn locked_pages(&self) -> u64 {
            self.locked as u64
        }
        fn lock_limit_pages(&self) -> Option<u64> {
            None
        }
        fn lock_cap(&self) -> bool {
            false
        }
        fn charge(&mut self, pages: i64) {
            self.locked += pages;
        }
    }

    /// A Type1 v2 instance over `map` with `groups` attached (one domain each).
    fn attached(
        map: &mut DmaMap<'_>,
        iommu: &mut TestIommu,
        memory: &mut TestMemory,
        groups: &[GroupId],
    ) -> Type1 {
        let mut type1 =
            Type1::open(extension::TYPE1V2_IOMMU, Type1Config::default(), 0x1000).unwrap();
        for &group in groups {
            type1.attach_group(map, iommu, memory, group).unwrap();
        }
        type1
    }

    const MAP: MapDma = MapDma {
        flags: dma_map_flags::READ | dma_map_flags::WRITE,
        vaddr: 0x10_0000,
        iova: 0x10_0000,
        size: 0x2000,
    };

    /// A platform run whose last byte would wrap past physical 2^64 − 1 is refused with
    /// `EFAULT`; nothing stays pinned, charged or recorded.
    #[test]
    fn wrapping_physical_run_is_refused() {
        let mut storage = [DmaEntry::EMPTY; 4];
        let mut map = DmaMap::new(&mut storage);
        let (mut iommu, mut memory) = (TestIommu::default(), TestMemory::default());
        let mut type1 = attached(&mut map, &mut iommu, &mut memory, &[1]);
        memory.phys = Some(u64::MAX - 0xfff);
        let result = type1.map_dma(&mut map, &mut iommu, &mut memory, &MAP);
        assert_eq!(result, Err(Errno::EFAULT));
        assert_eq!((memory.pinned, memory.locked, map.len()), (0, 0, 0));
        assert_eq!(type1.dma_avail(), DEFAULT_DMA_ENTRY_LIMIT);
    }

    /// A map failure in the second domain rolls back the first domain's mapping, the pin
    /// and the kernel-mode charge.
    #[test]
    fn map_failure_in_a_later_domain_rolls_back() {
        let mut storage = [DmaEntry::EMPTY; 4];
        let mut map = DmaMap::new(&mut storage);
        let (mut iommu, mut memory) = (TestIommu::default(), TestMemory::default());
        let mut type1 = attached(&mut map, &mut iommu, &mut memory, &[1, 2]);
        assert_eq!(type1.domain_count(), 2);
        // Domains are kept newest first: fail the one mapped second.
        iommu.fail_map = Some(1);
        let result = type1.map_dma(&mut map, &mut iommu, &mut memory, &MAP);
        assert_eq!(result, Err(Errno::EIO));
        assert_eq!((memory.pinned, memory.locked, map.len()), (0, 0, 0));
        iommu.fail_map = None;
        type1
            .map_dma(&mut map, &mut iommu, &mut memory, &MAP)
            .unwrap();
        assert_eq!((memory.pinned, memory.locked, map.len()), (0x2000, 2, 1));
    }

    /// Spec/02 §6.2 orders the pin (M12) before the dirty-bitmap size limit (M13): with
    /// dirty tracking on, an entry of more than 2^31 − 1 pages whose pin fails returns
    /// the pin's errno; one that pins is refused with `EINVAL` and released again.
    #[test]
    fn dirty_size_limit_comes_after_the_pin() {
        let mut storage = [DmaEntry::EMPTY; 4];
        let mut map = DmaMap::new(&mut storage);
        let (mut iommu, mut memory) = (TestIommu::default(), TestMemory::default());
        let mut type1 = attached(&mut map, &mut iommu, &mut memory, &[1]);
        type1
            .dirty_pages_control(&mut map, dirty_flags::START)
            .unwrap();
        let huge = MapDma {
            size: 1 << 43, // 2^31 pages of 4 KiB
            ..MAP
        };
        // The pin of this range fails (its last page wraps physically): EFAULT, not EINVAL.
        memory.phys = Some(u64::MAX - (1 << 42));
        let result = type1.map_dma(&mut map, &mut iommu, &mut memory, &huge);
        assert_eq!(result, Err(Errno::EFAULT));
        // It pins: refused by the dirty limit, nothing left pinned, charged or recorded.
        memory.phys = None;
        let result = type1.map_dma(&mut map, &mut iommu, &mut memory, &huge);
        assert_eq!(result, Err(Errno::EINVAL));
        assert_eq!((memory.pinned, memory.locked, map.len()), (0, 0, 0));
        assert_eq!(type1.dma_avail(), DEFAULT_DMA_ENTRY_LIMIT);
        // One page less fits.
        let fits = MapDma {
            size: (1 << 43) - 0x1000,
            ..MAP
        };
        type1
            .map_dma(&mut map, &mut iommu, &mut memory, &fits)
            .unwrap();
        assert_eq!(map.len(), 1);
    }

    /// A pgsize of 0 (domains sharing no page size) refuses instead of dividing by zero.
    #[test]
    fn zero_pgsize_never_divides_by_zero() {
        let mut storage = [DmaEntry::EMPTY; 4];
        let mut map = DmaMap::new(&mut storage);
        let entry = Mapping {
            iova: 0x1000,
            size: 0x2000,
            ..Mapping::EMPTY
        };
        map.insert(entry).unwrap();
        let mut type1 = Type1::open(extension::TYPE1V2_IOMMU, Type1Config::default(), 0).unwrap();
        assert_eq!(type1.pgsize(), 0);
        assert_eq!(
            type1.dirty_pages_control(&mut map, dirty_flags::START),
            Err(Errno::EINVAL)
        );
        type1.dirty_tracking = true;
        let mut dirty = entry;
        dirty.dirty_all = true;
        let mut buffer = [0u8; 8];
        assert_eq!(
            type1.report_dirty(&mut dirty, 0, &mut buffer),
            Err(Errno::EFAULT)
        );
    }
}
