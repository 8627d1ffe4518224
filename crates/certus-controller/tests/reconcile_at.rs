//! `vault.certus.io/reconcile-at` forces a VaultPolicy reconcile: a new value changes the
//! controller's predicate (so the watch event is not filtered out), while status-only
//! changes and unrelated annotations do not.

use certus_api::annotations::RECONCILE_AT;
use certus_controller::policy_predicate;
use certus_controller::testing::policy;

#[test]
fn a_new_reconcile_at_value_passes_the_predicate() {
    let p = policy("team-a", "app-read");
    let base = policy_predicate(&p);

    let mut annotated = p.clone();
    annotated
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RECONCILE_AT.to_string(), "1733338000".to_string());
    let first = policy_predicate(&annotated);
    assert_ne!(first, base, "setting the annotation triggers a reconcile");

    let mut again = annotated.clone();
    again
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(RECONCILE_AT.to_string(), "1733338060".to_string());
    assert_ne!(
        policy_predicate(&again),
        first,
        "a new value triggers again"
    );

    let mut other = annotated.clone();
    other
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("example.com/note".to_string(), "x".to_string());
    assert_eq!(
        policy_predicate(&other),
        first,
        "unrelated annotations do not"
    );

    let mut status_only = annotated.clone();
    status_only.status = Some(Default::default());
    assert_eq!(
        policy_predicate(&status_only),
        first,
        "status changes do not"
    );
    assert_eq!(RECONCILE_AT, "vault.certus.io/reconcile-at");
}
