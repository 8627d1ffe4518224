//! Who owns a Vault object that several watched resources name (a Vault policy name, a
//! mount, a role): the oldest claimant by `creationTimestamp`, then namespace, then
//! name. Shared by the `VaultPolicy` controller and the configuration kinds.

use kube::{Resource, ResourceExt};

/// Whether `a` and `b` are the same object (namespace and name).
pub(crate) fn same_object<K: Resource>(a: &K, b: &K) -> bool {
    a.meta().namespace == b.meta().namespace && a.meta().name == b.meta().name
}

/// Sorts claimants into claim order: the first one owns the Vault object. Objects
/// without a `creationTimestamp` (not yet stored) come last.
pub(crate) fn sort_in_claim_order<K: Resource>(list: &mut [&K]) {
    list.sort_by_cached_key(|o| {
        (
            o.meta().creation_timestamp.is_none(),
            o.meta().creation_timestamp.clone(),
            o.namespace(),
            o.name_any(),
        )
    });
}
