//! [`PageWalk`]: an [`Iommu`] wrapper that answers `iova_to_phys_run` with the trait's
//! default page-by-page walk (what the kernel does, spec/02-type1.md §12.2), for comparing
//! a platform's run-aware override against it; and [`forward_iommu!`](crate::forward_iommu),
//! the forwarding methods such wrappers share.

use vfio_core::errno::ErrorType;
use vfio_core::platform::{DomainId, Iommu};

/// Inside an `impl Iommu for Wrapper`: forwards every [`Iommu`] method but the
/// translation queries (`iova_to_phys`, `iova_to_phys_run`) to the field `$field`, whose
/// error type is the wrapper's. The wrapper writes `iova_to_phys` itself and either
/// writes `iova_to_phys_run` or keeps the trait's default.
#[macro_export]
macro_rules! forward_iommu {
    ($field:tt) => {
        fn group_info(
            &self,
            g: ::vfio_core::platform::GroupId,
        ) -> Option<::vfio_core::platform::GroupInfo> {
            self.$field.group_info(g)
        }
        fn group_viable(&self, g: ::vfio_core::platform::GroupId) -> bool {
            self.$field.group_viable(g)
        }
        fn claim_dma_owner(
            &mut self,
            g: ::vfio_core::platform::GroupId,
        ) -> Result<(), <Self as ::vfio_core::errno::ErrorType>::Error> {
            self.$field.claim_dma_owner(g)
        }
        fn release_dma_owner(&mut self, g: ::vfio_core::platform::GroupId) {
            self.$field.release_dma_owner(g)
        }
        fn domain_alloc(
            &mut self,
            g: ::vfio_core::platform::GroupId,
        ) -> Result<::vfio_core::platform::DomainInfo, <Self as ::vfio_core::errno::ErrorType>::Error>
        {
            self.$field.domain_alloc(g)
        }
        fn domain_free(&mut self, d: ::vfio_core::platform::DomainId) {
            self.$field.domain_free(d)
        }
        fn attach(
            &mut self,
            d: ::vfio_core::platform::DomainId,
            g: ::vfio_core::platform::GroupId,
        ) -> Result<(), <Self as ::vfio_core::errno::ErrorType>::Error> {
            self.$field.attach(d, g)
        }
        fn detach(&mut self, d: ::vfio_core::platform::DomainId, g: ::vfio_core::platform::GroupId) {
            self.$field.detach(d, g)
        }
        fn reserved_region(
            &self,
            g: ::vfio_core::platform::GroupId,
            i: usize,
        ) -> Option<::vfio_core::platform::ReservedRegion> {
            self.$field.reserved_region(g, i)
        }
        fn map(
            &mut self,
            d: ::vfio_core::platform::DomainId,
            iova: u64,
            phys: u64,
            len: u64,
            prot: ::vfio_core::platform::Prot,
        ) -> Result<(), <Self as ::vfio_core::errno::ErrorType>::Error> {
            self.$field.map(d, iova, phys, len, prot)
        }
        fn unmap(&mut self, d: ::vfio_core::platform::DomainId, iova: u64, len: u64) -> u64 {
            self.$field.unmap(d, iova, len)
        }
    };
}

/// Forwards every [`Iommu`] call to `.0` except `iova_to_phys_run`, which keeps the
/// trait's default (one `iova_to_phys` per page).
#[derive(Debug)]
pub struct PageWalk<I>(pub I);

impl<I: ErrorType> ErrorType for PageWalk<I> {
    type Error = I::Error;
}

impl<I: Iommu> Iommu for PageWalk<I> {
    crate::forward_iommu!(0);
    fn iova_to_phys(&self, d: DomainId, iova: u64) -> Option<u64> {
        self.0.iova_to_phys(d, iova)
    }
}
