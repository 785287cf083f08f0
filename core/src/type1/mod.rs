//! The Type1 IOMMU backend (spec/02-type1.md).
