//! [`PageWalk`]: an [`Iommu`] wrapper that answers `iova_to_phys_run` with the trait's
//! default page-by-page walk (what the kernel does, spec/02-type1.md §12.2), for comparing
//! a platform's run-aware override against it.

use vfio_core::errno::ErrorType;
use vfio_core::platform::{DomainId, DomainInfo, GroupId, GroupInfo, Iommu, Prot, ReservedRegion};

/// Forwards every [`Iommu`] call to `.0` except `iova_to_phys_run`, which keeps the
/// trait's default (one `iova_to_phys` per page).
#[derive(Debug)]
pub struct PageWalk<I>(pub I);

impl<I: ErrorType> ErrorType for PageWalk<I> {
    type Error = I::Error;
}

impl<I: Iommu> Iommu for PageWalk<I> {
    fn group_info(&self, g: GroupId) -> Option<GroupInfo> {
        self.0.group_info(g)
    }
    fn group_viable(&self, g: GroupId) -> bool {
        self.0.group_viable(g)
    }
    fn claim_dma_owner(&mut self, g: GroupId) -> Result<(), I::Error> {
        self.0.claim_dma_owner(g)
    }
    fn release_dma_owner(&mut self, g: GroupId) {
        self.0.release_dma_owner(g)
    }
    fn domain_alloc(&mut self, g: GroupId) -> Result<DomainInfo, I::Error> {
        self.0.domain_alloc(g)
    }
    fn domain_free(&mut self, d: DomainId) {
        self.0.domain_free(d)
    }
    fn attach(&mut self, d: DomainId, g: GroupId) -> Result<(), I::Error> {
        self.0.attach(d, g)
    }
    fn detach(&mut self, d: DomainId, g: GroupId) {
        self.0.detach(d, g)
    }
    fn reserved_region(&self, g: GroupId, i: usize) -> Option<ReservedRegion> {
        self.0.reserved_region(g, i)
    }
    fn map(
        &mut self,
        d: DomainId,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<(), I::Error> {
        self.0.map(d, iova, phys, len, prot)
    }
    fn unmap(&mut self, d: DomainId, iova: u64, len: u64) -> u64 {
        self.0.unmap(d, iova, len)
    }
    fn iova_to_phys(&self, d: DomainId, iova: u64) -> Option<u64> {
        self.0.iova_to_phys(d, iova)
    }
}
