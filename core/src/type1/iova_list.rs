//! Valid IOVA ranges of a container: domain apertures minus reserved regions
//! (spec/02-type1.md §4).

use heapless::Vec;

use super::dma_map::{DmaMap, IovaRange};
use crate::errno::{Errno, Result};
use crate::platform::{Iommu, ReservedKind, ReservedRegion};

/// Maximum number of disjoint valid ranges a container tracks. Each non-relaxable
/// reserved region can split one range in two; 32 covers an aperture with 31 holes.
pub const MAX_IOVA_RANGES: usize = 32;

/// Sorted, disjoint list of valid inclusive ranges; empty means unrestricted.
pub type IovaList = Vec<IovaRange, MAX_IOVA_RANGES>;

/// The reserved regions of `group` that Type1 honours, in the platform's order
/// (spec/02-type1.md §4.1): relaxable direct regions and empty ones (`start > end`) are
/// skipped.
pub(crate) fn honoured_regions<I: Iommu>(
    iommu: &I,
    group: u32,
) -> impl Iterator<Item = ReservedRegion> + '_ {
    (0..)
        .map_while(move |i| iommu.reserved_region(group, i))
        .filter(|r| r.kind != ReservedKind::DirectRelaxable && r.start <= r.end)
}

/// Whether `range` lies inside one node of `list` (or the list is empty).
pub fn allows(list: &IovaList, range: IovaRange) -> bool {
    list.is_empty() || list.iter().any(|node| node.contains(&range))
}

fn any_entry_overlaps(map: &DmaMap<'_>, range: IovaRange) -> bool {
    map.first_overlapping(range).is_some()
}

/// Removes `[start, end]` from every node of `list` (spec/02-type1.md §4.2 step 4).
///
/// # Errors
/// `ENOMEM` when the split needs more than [`MAX_IOVA_RANGES`] nodes.
pub fn exclude(list: &mut IovaList, start: u64, end: u64) -> Result<()> {
    let hole = IovaRange {
        first: start,
        last: end,
    };
    let mut out = IovaList::new();
    for node in list.iter() {
        if !node.overlaps(&hole) {
            out.push(*node).map_err(|_| Errno::ENOMEM)?;
            continue;
        }
        if start > node.first {
            out.push(IovaRange {
                first: node.first,
                last: start - 1,
            })
            .map_err(|_| Errno::ENOMEM)?;
        }
        if end < node.last {
            out.push(IovaRange {
                first: end + 1,
                last: node.last,
            })
            .map_err(|_| Errno::ENOMEM)?;
        }
    }
    *list = out;
    Ok(())
}

/// The valid list after attaching a group whose new domain has aperture
/// `[aperture_start, aperture_end]` (spec/02-type1.md §4.2). `current` is not modified.
///
/// # Errors
/// `EINVAL` on an aperture or reserved-region conflict with existing entries, or when
/// nothing valid is left; `ENOMEM` when the list outgrows its capacity.
pub fn after_attach<I: Iommu>(
    current: &IovaList,
    map: &DmaMap<'_>,
    iommu: &I,
    group: u32,
    aperture_start: u64,
    aperture_end: u64,
) -> Result<IovaList> {
    if let (Some(first), Some(last)) = (current.first(), current.last()) {
        if aperture_start > last.last || aperture_end < first.first {
            return Err(Errno::EINVAL);
        }
        if aperture_start > first.first
            && any_entry_overlaps(
                map,
                IovaRange {
                    first: first.first,
                    last: aperture_start - 1,
                },
            )
        {
            return Err(Errno::EINVAL);
        }
        if aperture_end < last.last
            && any_entry_overlaps(
                map,
                IovaRange {
                    first: aperture_end + 1,
                    last: last.last,
                },
            )
        {
            return Err(Errno::EINVAL);
        }
    }
    for region in honoured_regions(iommu, group) {
        if any_entry_overlaps(
            map,
            IovaRange {
                first: region.start,
                last: region.end,
            },
        ) {
            return Err(Errno::EINVAL);
        }
    }
    let mut list = IovaList::new();
    if current.is_empty() {
        list.push(IovaRange {
            first: aperture_start,
            last: aperture_end,
        })
        .map_err(|_| Errno::ENOMEM)?;
    } else {
        for node in current.iter() {
            let first = node.first.max(aperture_start);
            let last = node.last.min(aperture_end);
            if first <= last {
                list.push(IovaRange { first, last })
                    .map_err(|_| Errno::ENOMEM)?;
            }
        }
    }
    for region in honoured_regions(iommu, group) {
        exclude(&mut list, region.start, region.end)?;
    }
    if list.is_empty() {
        return Err(Errno::EINVAL);
    }
    Ok(list)
}

/// Rebuilds the valid list after a group left (spec/02-type1.md §4.3). `bounds`: the new
/// outer bounds when the group's domain disappeared (intersection of the remaining
/// apertures), else `None`. `remaining` yields the IOMMU-backed groups still attached.
/// On any failure, or when nothing would be left, the old list is kept.
pub fn after_detach<I: Iommu>(
    list: &mut IovaList,
    iommu: &I,
    bounds: Option<(u64, u64)>,
    remaining: impl Iterator<Item = u32> + Clone,
) {
    let (Some(first), Some(last)) = (list.first(), list.last()) else {
        return;
    };
    let (start, end) = bounds.unwrap_or((first.first, last.last));
    if start > end {
        return;
    }
    let mut rebuilt = IovaList::new();
    if rebuilt
        .push(IovaRange {
            first: start,
            last: end,
        })
        .is_err()
    {
        return;
    }
    for group in remaining {
        for region in honoured_regions(iommu, group) {
            if exclude(&mut rebuilt, region.start, region.end).is_err() {
                return;
            }
        }
    }
    if !rebuilt.is_empty() {
        *list = rebuilt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_splits_and_trims() {
        let mut list = IovaList::new();
        list.push(IovaRange {
            first: 0,
            last: 0xffff_ffff_ffff,
        })
        .unwrap();
        exclude(&mut list, 0xfee0_0000, 0xfeef_ffff).unwrap();
        assert_eq!(
            list.as_slice(),
            &[
                IovaRange {
                    first: 0,
                    last: 0xfedf_ffff
                },
                IovaRange {
                    first: 0xfef0_0000,
                    last: 0xffff_ffff_ffff
                }
            ]
        );
        exclude(&mut list, 0, 0xfff).unwrap();
        assert_eq!(list[0].first, 0x1000);
        assert!(allows(
            &list,
            IovaRange {
                first: 0xfef0_0000,
                last: 0xfef0_0fff
            }
        ));
        assert!(!allows(
            &list,
            IovaRange {
                first: 0xfedf_f000,
                last: 0xfee0_0fff
            }
        ));
    }
}
