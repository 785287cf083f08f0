//! Exact locked-memory accounting (an extension beyond the kernel, off by default:
//! [`crate::type1::Type1Config::exact_accounting`]).
//!
//! The kernel charges every page an entry pins, so the same host page mapped at two IOVAs
//! is charged twice (spec/02-type1.md §8). In exact mode a container charges each host
//! *physical* page once, however many of its entries pin it, and un-charges it when the
//! last of them goes. The container records the charged pages as a sorted list of
//! physical runs with a reference count each, in an embedder-provided slice of
//! [`ChargeRun`] (24 bytes each; nothing is allocated).
//!
//! # Capacity
//!
//! Pinning a physical run needs one slot per uncovered gap it fills plus one per existing
//! run it splits at either end; releasing never needs a slot (a released range was pinned
//! as a whole, so its ends are already run boundaries). Runs are not merged, so a
//! container whose entries are each physically contiguous and pairwise either disjoint or
//! identical needs at most one slot per entry; partial overlaps need up to two more each.
//! When the slice is full, the MAP (or the replay of an attach) fails with `ENOMEM` and
//! is rolled back like any other failure.
//!
//! # Cost
//!
//! Lookup is a binary search, O(log r) for r runs; creating or deleting a run shifts the
//! runs above it (O(r) memory moves). Exact mode trades this for the exact charge.

use crate::errno::{Errno, Result};

/// One storage slot of [`ChargeRuns`]: a run of charged host pages and how many pins
/// (entry runs) reference each of its pages. The content is private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChargeRun {
    /// First byte (page aligned).
    first: u64,
    /// Last byte (inclusive).
    last: u64,
    /// References on every page of the run (≥ 1 while stored).
    refs: u64,
}

impl ChargeRun {
    /// An unused slot, for initializing storage slices.
    pub const EMPTY: ChargeRun = ChargeRun {
        first: 0,
        last: 0,
        refs: 0,
    };
}

impl Default for ChargeRun {
    fn default() -> Self {
        ChargeRun::EMPTY
    }
}

/// The physical pages one container charges in exact mode, with reference counts.
#[derive(Debug)]
pub struct ChargeRuns<'s> {
    runs: &'s mut [ChargeRun],
    len: usize,
}

/// Pages in `[first, last]` (`page` a power of two; `first` page aligned).
fn pages(first: u64, last: u64, page: u64) -> u64 {
    ((last - first) >> page.trailing_zeros()) + 1
}

impl<'s> ChargeRuns<'s> {
    /// An empty set that can hold `storage.len()` runs.
    pub fn new(storage: &'s mut [ChargeRun]) -> Self {
        ChargeRuns {
            runs: storage,
            len: 0,
        }
    }

    /// Number of runs stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is charged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of runs.
    pub fn capacity(&self) -> usize {
        self.runs.len()
    }

    /// Forgets every run (does not un-charge anything).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Pages currently charged, each host page once, in units of `page` bytes (the host
    /// page size, a power of two).
    pub fn charged_pages(&self, page: u64) -> u64 {
        self.stored()
            .iter()
            .map(|r| pages(r.first, r.last, page))
            .sum()
    }

    /// The references on the page containing the physical byte address `phys`: the number
    /// of pins (entry runs) holding it, 0 when it is not charged. O(log r).
    pub fn refs(&self, phys: u64) -> u64 {
        let i = self.lower(phys);
        match self.stored().get(i) {
            Some(r) if r.first <= phys => r.refs,
            _ => 0,
        }
    }

    fn stored(&self) -> &[ChargeRun] {
        self.runs.get(..self.len).unwrap_or(&[])
    }

    /// Index of the first run ending at or after `phys`.
    fn lower(&self, phys: u64) -> usize {
        self.stored().partition_point(|r| r.last < phys)
    }

    /// `(pages of [first, last] not charged yet, slots an add would need)`.
    pub(crate) fn preview(&self, first: u64, last: u64, page: u64) -> (u64, usize) {
        let runs = self.stored();
        let mut i = self.lower(first);
        let mut slots = 0;
        let mut fresh = 0;
        if runs.get(i).is_some_and(|r| r.first < first) {
            slots += 1;
        }
        let mut pos = first;
        loop {
            match runs.get(i) {
                Some(r) if r.first <= last => {
                    let start = r.first.max(pos);
                    if start > pos {
                        slots += 1;
                        fresh += pages(pos, start - 1, page);
                    }
                    if r.last > last {
                        slots += 1;
                        return (fresh, slots);
                    }
                    match r.last.checked_add(1) {
                        Some(next) if next <= last => pos = next,
                        _ => return (fresh, slots),
                    }
                    i += 1;
                }
                _ => return (fresh + pages(pos, last, page), slots + 1),
            }
        }
    }

    fn insert(&mut self, at: usize, run: ChargeRun) -> Result<()> {
        if self.len >= self.runs.len() || at > self.len {
            return Err(Errno::ENOMEM);
        }
        self.runs.copy_within(at..self.len, at + 1);
        self.runs[at] = run;
        self.len += 1;
        Ok(())
    }

    fn delete(&mut self, at: usize) {
        if at < self.len {
            self.runs.copy_within(at + 1..self.len, at);
            self.len -= 1;
        }
    }

    /// Splits run `i` so that a run starts at `at` (`first < at ≤ last` of run `i`).
    fn split(&mut self, i: usize, at: u64) -> Result<()> {
        let run = *self.runs.get(i).ok_or(Errno::ENOMEM)?;
        self.insert(i + 1, ChargeRun { first: at, ..run })?;
        self.runs[i].last = at - 1;
        Ok(())
    }

    /// Adds a reference to every page of `[first, last]` and returns the pages that were
    /// not charged before ([`ChargeRuns::preview`] then [`ChargeRuns::add_previewed`]).
    /// All or nothing.
    ///
    /// # Errors
    /// `ENOMEM` when the storage cannot hold the resulting runs (nothing changes).
    #[cfg(test)]
    pub(crate) fn add(&mut self, first: u64, last: u64, page: u64) -> Result<u64> {
        let (fresh, slots) = self.preview(first, last, page);
        self.add_previewed(first, last, slots)?;
        Ok(fresh)
    }

    /// Adds a reference to every page of `[first, last]` (bytes, inclusive, page aligned)
    /// given its preview: `slots` from [`ChargeRuns::preview`] with the runs unchanged
    /// since. The pages that preview reported fresh are those that become charged (the
    /// caller charges them). All or nothing (Type1 MAP, spec/02-type1.md §8).
    ///
    /// # Errors
    /// `ENOMEM` when the storage cannot hold `slots` more runs (nothing changes).
    pub(crate) fn add_previewed(&mut self, first: u64, last: u64, slots: usize) -> Result<()> {
        if self.len.saturating_add(slots) > self.runs.len() {
            return Err(Errno::ENOMEM);
        }
        let mut i = self.lower(first);
        if self.stored().get(i).is_some_and(|r| r.first < first) {
            self.split(i, first)?;
            i += 1;
        }
        let mut pos = first;
        loop {
            match self.stored().get(i).copied() {
                Some(r) if r.first <= last => {
                    if r.first > pos {
                        let gap = ChargeRun {
                            first: pos,
                            last: r.first - 1,
                            refs: 1,
                        };
                        self.insert(i, gap)?;
                        i += 1;
                    }
                    if r.last > last {
                        self.split(i, last + 1)?;
                    }
                    self.runs[i].refs += 1;
                    match r.last.checked_add(1) {
                        Some(next) if next <= last => pos = next,
                        _ => return Ok(()),
                    }
                    i += 1;
                }
                _ => {
                    let gap = ChargeRun {
                        first: pos,
                        last,
                        refs: 1,
                    };
                    self.insert(i, gap)?;
                    return Ok(());
                }
            }
        }
    }

    /// Drops a reference from every charged page of `[first, last]` and returns the pages
    /// whose last reference went (to be un-charged). Never needs a slot for a range that
    /// was added as a whole (or as adjacent wholes); a run it would have to split with the
    /// storage full is left as is.
    pub(crate) fn remove(&mut self, first: u64, last: u64, page: u64) -> u64 {
        let mut released = 0;
        let mut i = self.lower(first);
        if self.stored().get(i).is_some_and(|r| r.first < first) {
            // On failure the straddling run keeps its references (see above).
            let _ = self.split(i, first);
            i += 1;
        }
        while let Some(r) = self.stored().get(i).copied() {
            if r.first > last {
                break;
            }
            if r.last > last && self.split(i, last + 1).is_err() {
                break;
            }
            let r = self.runs[i];
            if r.refs <= 1 {
                released += pages(r.first, r.last, page);
                self.delete(i);
            } else {
                self.runs[i].refs -= 1;
                i += 1;
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 0x1000;

    fn span(a: u64, n: u64) -> (u64, u64) {
        (a * P, (a + n) * P - 1)
    }

    #[test]
    fn add_and_remove_against_a_page_model() {
        let mut storage = [ChargeRun::EMPTY; 64];
        let mut runs = ChargeRuns::new(&mut storage);
        let mut model = [0u64; 64];
        let mut x: u64 = 0x9e37_79b9;
        let mut live: std::vec::Vec<(u64, u64)> = std::vec::Vec::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 != 0 || live.is_empty() {
                let a = x % 56;
                let n = 1 + (x >> 8) % 8;
                let (f, l) = span(a, n);
                let before = runs.len();
                match runs.add(f, l, P) {
                    Ok(fresh) => {
                        let want = (a..a + n).filter(|&p| model[p as usize] == 0).count();
                        assert_eq!(fresh, want as u64);
                        for p in a..a + n {
                            model[p as usize] += 1;
                        }
                        live.push((a, n));
                    }
                    Err(e) => {
                        assert_eq!(e, Errno::ENOMEM);
                        assert_eq!(runs.len(), before);
                    }
                }
            } else {
                let (a, n) = live.swap_remove((x >> 5) as usize % live.len());
                let (f, l) = span(a, n);
                let freed = runs.remove(f, l, P);
                let want = (a..a + n).filter(|&p| model[p as usize] == 1).count();
                assert_eq!(freed, want as u64);
                for p in a..a + n {
                    model[p as usize] -= 1;
                }
            }
            for (p, &refs) in model.iter().enumerate() {
                assert_eq!(runs.refs(p as u64 * P), refs, "page {p}");
            }
            let charged = model.iter().filter(|&&r| r > 0).count() as u64;
            assert_eq!(runs.charged_pages(P), charged);
        }
    }

    #[test]
    fn full_storage_refuses_without_change() {
        let mut storage = [ChargeRun::EMPTY; 1];
        let mut runs = ChargeRuns::new(&mut storage);
        assert_eq!(runs.add(0, 4 * P - 1, P), Ok(4));
        assert_eq!(runs.add(0, 4 * P - 1, P), Ok(0));
        assert_eq!(runs.add(P, 2 * P - 1, P), Err(Errno::ENOMEM));
        assert_eq!(runs.add(8 * P, 9 * P - 1, P), Err(Errno::ENOMEM));
        assert_eq!(runs.refs(P), 2);
        assert_eq!(runs.remove(0, 4 * P - 1, P), 0);
        assert_eq!(runs.remove(0, 4 * P - 1, P), 4);
        assert!(runs.is_empty());
    }
}
