//! Watch streams with a deserialize guard, merged over namespaces.
//!
//! A typed `watcher::<K>` decodes the whole LIST response as one `ObjectList<K>`: a
//! single object the operator cannot decode (a field of the wrong type written by a newer
//! or older CRD version, a schema-less edit) fails the list, the watcher retries forever,
//! and the controller reconciles nothing. So the controllers watch `DynamicObject`s (any
//! JSON object decodes) and convert each object to `K` here: one that fails is logged
//! with its name, counted in `certus_controller_decode_errors`, and skipped; every other
//! object flows on.
//!
//! The same adapter merges several per-namespace watches (`RunOptions::namespaces`) into
//! one event stream a single reflector store can consume: the store becomes ready once
//! every namespace has been listed, and a re-list of one namespace is turned into
//! `Apply`/`Delete` events for that namespace only.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::{stream, Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::metrics::Metrics;

type Key = (Option<String>, String);

fn key_of<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

struct Scope<K> {
    /// `None`: every namespace.
    namespace: Option<String>,
    /// Objects of a list in progress.
    listing: Option<Vec<K>>,
    /// Whether a list of this scope completed at least once.
    listed: bool,
    /// Before the merged stream is ready: the scope's current objects.
    pending: BTreeMap<Key, K>,
}

/// Converts `DynamicObject` watch events of several scopes into `K` events for one store.
pub struct Merger<K: Resource<DynamicType = ()> + 'static> {
    kind: &'static str,
    scopes: Vec<Scope<K>>,
    ready: bool,
    /// The store fed by this merger's output (to find objects a re-list no longer has,
    /// and the last good version of an object deleted while undecodable).
    reader: Store<K>,
    metrics: Arc<Metrics>,
}

impl<K> Merger<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
{
    /// A merger over `scopes` (`None` = all namespaces).
    pub fn new(
        kind: &'static str,
        scopes: Vec<Option<String>>,
        reader: Store<K>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Merger {
            kind,
            scopes: scopes
                .into_iter()
                .map(|namespace| Scope {
                    namespace,
                    listing: None,
                    listed: false,
                    pending: BTreeMap::new(),
                })
                .collect(),
            ready: false,
            reader,
            metrics,
        }
    }

    fn decode(&self, obj: DynamicObject) -> Option<K> {
        let namespace = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        match obj.try_parse::<K>() {
            Ok(k) => Some(k),
            Err(e) => {
                warn!(
                    kind = self.kind,
                    namespace,
                    name,
                    error = %e,
                    "skipping an object that cannot be decoded; fix or delete it (other objects are unaffected)"
                );
                self.metrics.decode_error(self.kind);
                None
            }
        }
    }

    fn in_scope(namespace: &Option<String>, obj: &K) -> bool {
        match namespace {
            None => true,
            Some(ns) => obj.meta().namespace.as_deref() == Some(ns.as_str()),
        }
    }

    /// Handles one event of scope `scope`; returns the events to pass on.
    pub fn handle(
        &mut self,
        scope: usize,
        item: Result<Event<DynamicObject>, watcher::Error>,
    ) -> Vec<Result<Event<K>, watcher::Error>> {
        let event = match item {
            Ok(e) => e,
            Err(e) => return vec![Err(e)],
        };
        match event {
            Event::Init => {
                self.scopes[scope].listing = Some(Vec::new());
                vec![]
            }
            Event::InitApply(obj) => {
                if let Some(k) = self.decode(obj) {
                    self.scopes[scope]
                        .listing
                        .get_or_insert_with(Vec::new)
                        .push(k);
                }
                vec![]
            }
            Event::InitDone => {
                let listed = self.scopes[scope].listing.take().unwrap_or_default();
                self.scopes[scope].listed = true;
                if !self.ready {
                    self.scopes[scope].pending =
                        listed.into_iter().map(|k| (key_of(&k), k)).collect();
                    if !self.scopes.iter().all(|s| s.listed) {
                        return vec![];
                    }
                    self.ready = true;
                    let mut out = vec![Ok(Event::Init)];
                    for s in &mut self.scopes {
                        out.extend(
                            std::mem::take(&mut s.pending)
                                .into_values()
                                .map(|k| Ok(Event::InitApply(k))),
                        );
                    }
                    out.push(Ok(Event::InitDone));
                    return out;
                }
                let keys: HashSet<Key> = listed.iter().map(key_of).collect();
                let ns = &self.scopes[scope].namespace;
                let mut out: Vec<_> = self
                    .reader
                    .state()
                    .into_iter()
                    .filter(|o| Self::in_scope(ns, o) && !keys.contains(&key_of(o.as_ref())))
                    .map(|o| Ok(Event::Delete(o.as_ref().clone())))
                    .collect();
                out.extend(listed.into_iter().map(|k| Ok(Event::Apply(k))));
                out
            }
            Event::Apply(obj) => {
                let Some(k) = self.decode(obj) else {
                    return vec![];
                };
                if self.ready {
                    vec![Ok(Event::Apply(k))]
                } else {
                    self.scopes[scope].pending.insert(key_of(&k), k);
                    vec![]
                }
            }
            Event::Delete(obj) => {
                let key: Key = (
                    obj.metadata.namespace.clone(),
                    obj.metadata.name.clone().unwrap_or_default(),
                );
                let decoded = self.decode(obj);
                if !self.ready {
                    self.scopes[scope].pending.remove(&key);
                    return vec![];
                }
                let gone = decoded.or_else(|| {
                    // Undecodable now: remove the last good version from the store.
                    let mut r = ObjectRef::<K>::new(&key.1);
                    if let Some(ns) = &key.0 {
                        r = r.within(ns);
                    }
                    self.reader.get(&r).map(|o| o.as_ref().clone())
                });
                gone.map(|k| vec![Ok(Event::Delete(k))]).unwrap_or_default()
            }
        }
    }
}

/// A deserialize-guarded, namespace-merged watch of `K`, to be fed into the writer whose
/// reader is `reader`.
pub fn guarded_watch<K>(
    kind: &'static str,
    client: &Client,
    scopes: Vec<Option<String>>,
    wc: watcher::Config,
    reader: Store<K>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let ar = ApiResource::erase::<K>(&());
    let mut merger = Merger::new(kind, scopes.clone(), reader, metrics);
    let streams = scopes.into_iter().enumerate().map(|(i, ns)| {
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        watcher::watcher(api, wc.clone())
            .default_backoff()
            .map(move |item| (i, item))
            .boxed()
    });
    stream::select_all(streams).flat_map(move |(i, item)| stream::iter(merger.handle(i, item)))
}

/// A reflector store of `K` and the stream of its applied objects, both behind the
/// deserialize guard. The stream must be polled (by a controller) for the store to fill.
pub fn reflected<K>(
    kind: &'static str,
    client: &Client,
    scopes: Vec<Option<String>>,
    wc: watcher::Config,
    metrics: Arc<Metrics>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let events = guarded_watch(kind, client, scopes, wc, reader.clone(), metrics);
    (reader, events.reflect(writer).applied_objects())
}

#[cfg(test)]
mod tests {
    use super::*;
    use certus_api::VaultPolicy;
    use kube::ResourceExt;
    use serde_json::json;

    fn dynamic(ns: &str, name: &str, rules: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "vault.certus.io/v1alpha1",
            "kind": "VaultPolicy",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
            "spec": {"rules": rules}
        }))
        .unwrap()
    }
    fn good(ns: &str, name: &str) -> DynamicObject {
        dynamic(ns, name, json!("path \"a\" { capabilities = [\"read\"] }"))
    }
    fn bad(ns: &str, name: &str) -> DynamicObject {
        // `rules` must be a string.
        dynamic(ns, name, json!({"not": "a string"}))
    }

    struct Harness {
        merger: Merger<VaultPolicy>,
        writer: reflector::store::Writer<VaultPolicy>,
        reader: Store<VaultPolicy>,
        metrics: Arc<Metrics>,
    }

    impl Harness {
        fn new(scopes: Vec<Option<String>>) -> Self {
            let (reader, writer) = reflector::store::<VaultPolicy>();
            let metrics = Arc::new(Metrics::default());
            Harness {
                merger: Merger::new("VaultPolicy", scopes, reader.clone(), metrics.clone()),
                writer,
                reader,
                metrics,
            }
        }
        /// Feeds one event and applies the output to the store; returns a summary.
        fn feed(&mut self, scope: usize, e: Event<DynamicObject>) -> Vec<String> {
            let out = self.merger.handle(scope, Ok(e));
            out.into_iter()
                .map(|r| {
                    let e = r.unwrap();
                    self.writer.apply_watcher_event(&e);
                    match &e {
                        Event::Init => "Init".to_string(),
                        Event::InitDone => "InitDone".to_string(),
                        Event::InitApply(o) => format!("InitApply({})", o.name_any()),
                        Event::Apply(o) => format!("Apply({})", o.name_any()),
                        Event::Delete(o) => format!("Delete({})", o.name_any()),
                    }
                })
                .collect()
        }
        fn names(&self) -> Vec<String> {
            let mut n: Vec<_> = self.reader.state().iter().map(|o| o.name_any()).collect();
            n.sort();
            n
        }
    }

    #[test]
    fn malformed_objects_are_skipped_not_fatal() {
        let mut h = Harness::new(vec![None]);
        assert!(h.feed(0, Event::Init).is_empty());
        h.feed(0, Event::InitApply(good("a", "one")));
        h.feed(0, Event::InitApply(bad("a", "broken")));
        h.feed(0, Event::InitApply(good("b", "two")));
        let out = h.feed(0, Event::InitDone);
        assert_eq!(
            out,
            ["Init", "InitApply(one)", "InitApply(two)", "InitDone"]
        );
        assert_eq!(h.names(), ["one", "two"]);
        assert_eq!(h.metrics.decode_errors("VaultPolicy"), 1);

        // A live update that breaks an object is skipped; the next good event still flows.
        assert!(h.feed(0, Event::Apply(bad("a", "one"))).is_empty());
        assert_eq!(
            h.feed(0, Event::Apply(good("a", "three"))),
            ["Apply(three)"]
        );
        assert_eq!(h.metrics.decode_errors("VaultPolicy"), 2);
        // Deleting an object while it is undecodable still removes its last good version.
        assert_eq!(h.feed(0, Event::Delete(bad("a", "one"))), ["Delete(one)"]);
        assert_eq!(h.names(), ["three", "two"]);
    }

    #[test]
    fn namespaces_are_merged_and_ready_after_all_listed() {
        let mut h = Harness::new(vec![Some("a".into()), Some("b".into())]);
        h.feed(0, Event::Init);
        h.feed(0, Event::InitApply(good("a", "a1")));
        assert!(
            h.feed(0, Event::InitDone).is_empty(),
            "not ready before b is listed"
        );
        // Live events of a listed namespace before readiness are kept.
        assert!(h.feed(0, Event::Apply(good("a", "a2"))).is_empty());
        h.feed(1, Event::Init);
        h.feed(1, Event::InitApply(good("b", "b1")));
        let out = h.feed(1, Event::InitDone);
        assert_eq!(
            out,
            [
                "Init",
                "InitApply(a1)",
                "InitApply(a2)",
                "InitApply(b1)",
                "InitDone"
            ]
        );
        assert_eq!(h.names(), ["a1", "a2", "b1"]);

        // A re-list of namespace a that lost a1 deletes a1 only; b is untouched.
        h.feed(0, Event::Init);
        h.feed(0, Event::InitApply(good("a", "a2")));
        let out = h.feed(0, Event::InitDone);
        assert_eq!(out, ["Delete(a1)", "Apply(a2)"]);
        assert_eq!(h.names(), ["a2", "b1"]);
    }

    #[test]
    fn watch_errors_pass_through() {
        let mut h = Harness::new(vec![None]);
        let out = h.merger.handle(0, Err(watcher::Error::NoResourceVersion));
        assert!(matches!(
            out.as_slice(),
            [Err(watcher::Error::NoResourceVersion)]
        ));
    }
}
