//! Cached Jobs and Pods kept as their JSON, LZ4-compressed against a dictionary, decoded
//! when a reconcile reads one.
//!
//! A Pod in `k8s-openapi`'s types takes about 10 KiB even after `charon_core::slim` has
//! dropped what no observation reads: every `Container`, `ContainerStatus` and optional field
//! is laid out inline whether it is set or not. The same finished Pod as JSON is about
//! 1.4 KiB, and compressed on its own (its keys and label values repeat) about 0.9 KiB. The
//! Jobs Charon renders, and their Pods, are alike but for names, uids and times: compressed
//! against the JSON of the first object the cache held ([`Dictionary`]) each keeps little
//! more than those. The operator keeps a Job and a Pod for every run it has not yet seen
//! deleted, so at 100,000 runs the difference is most of its memory; a run's Job and Pods are
//! decoded a few times in its life.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use kube::runtime::reflector::{Lookup, store::Writer};
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What the objects of one cache are compressed against: the JSON of the first object packed
/// into it, which every later one resembles.
#[derive(Default)]
pub struct Dictionary(OnceLock<Arc<[u8]>>);

impl Dictionary {
    /// The dictionary, made of `json` if it has none yet.
    fn of(&self, json: &[u8]) -> Arc<[u8]> {
        self.0.get_or_init(|| json.into()).clone()
    }
}

/// What a cache notes of each object as it packs it, to answer without decoding it.
pub trait Noted {
    /// Whether the object is done with: a Job that has ended, a Pod that has terminated.
    fn ended(&self) -> bool;
}

impl Noted for k8s_openapi::api::batch::v1::Job {
    fn ended(&self) -> bool {
        charon_core::observe::job_ended(self)
    }
}

impl Noted for k8s_openapi::api::core::v1::Pod {
    fn ended(&self) -> bool {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed"))
    }
}

/// One cached object of kind `K`, as its compressed JSON. `owner` is what the cache's index
/// groups it by (a Job's instance, a Pod's Job), read when the object is packed.
pub struct Packed<K> {
    name: String,
    namespace: Option<String>,
    owner: Option<String>,
    /// [`Noted::ended`] of the object packed.
    ended: bool,
    json: Arc<[u8]>,
    /// The dictionary `json` was compressed against (shared by the whole cache).
    dictionary: Arc<[u8]>,
    kind: PhantomData<fn() -> K>,
}

// Not derived: a derive would ask `K: Clone`, and nothing of `K` is held.
impl<K> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Packed {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            owner: self.owner.clone(),
            ended: self.ended,
            json: self.json.clone(),
            dictionary: self.dictionary.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("owner", &self.owner)
            .field("bytes", &self.json.len())
            .finish()
    }
}

impl<K: kube::Resource + Serialize + DeserializeOwned + Noted> Packed<K> {
    /// Packs `object`, grouped under what `owner` reads from it, against `dictionary`.
    pub fn pack(object: &K, owner: fn(&K) -> Option<&str>, dictionary: &Dictionary) -> Self {
        let meta = object.meta();
        // Serializing a value of these types cannot fail: their maps have string keys and
        // their `Serialize` impls never return an error.
        let json = serde_json::to_vec(object).expect("a Kubernetes object serializes to JSON");
        let dictionary = dictionary.of(&json);
        Packed {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            owner: owner(object).map(str::to_string),
            ended: object.ended(),
            json: lz4_flex::block::compress_prepend_size_with_dict(&json, &dictionary).into(),
            dictionary,
            kind: PhantomData,
        }
    }

    /// The object as it was packed.
    pub fn unpack(&self) -> K {
        // The bytes are what `pack` compressed from a `K`'s JSON against this dictionary, and
        // these types read back their own JSON.
        let json =
            lz4_flex::block::decompress_size_prepended_with_dict(&self.json, &self.dictionary)
                .expect("a packed object decompresses as it was compressed");
        serde_json::from_slice(&json).expect("a packed object decodes as it was encoded")
    }

    /// What the cache's index groups the object by.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Whether the object packed was done with (see [`Noted`]).
    pub fn ended(&self) -> bool {
        self.ended
    }
}

impl<K: kube::Resource<DynamicType = ()>> Lookup for Packed<K> {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    // Not kept: the cache is keyed by namespace and name, and nothing reads a key's version
    // or uid (a decoded object has both).
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// A watch event with its objects packed.
pub fn pack_event<K>(
    event: &watcher::Event<K>,
    owner: fn(&K) -> Option<&str>,
    dictionary: &Dictionary,
) -> watcher::Event<Packed<K>>
where
    K: kube::Resource + Serialize + DeserializeOwned + Noted,
{
    let pack = |o| Packed::pack(o, owner, dictionary);
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(pack(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(pack(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(pack(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Applies a watch event to a packed cache (and its index, first, so whoever the change wakes
/// finds the object in both). The event goes on unpacked to whoever the watch wakes.
pub fn apply<K>(
    event: &watcher::Event<K>,
    owner: fn(&K) -> Option<&str>,
    dictionary: &Dictionary,
    index: &super::index::NameIndex<Packed<K>>,
    writer: &mut Writer<Packed<K>>,
) where
    K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + Noted,
{
    let packed = pack_event(event, owner, dictionary);
    index.follow(&packed);
    writer.apply_watcher_event(&packed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector::ObjectRef;

    fn job_of(pod: &Pod) -> Option<&str> {
        pod.metadata
            .labels
            .as_ref()?
            .get("job-name")
            .map(String::as_str)
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-1", "namespace": "ns", "uid": "u-1",
                "resourceVersion": "7", "labels": {"job-name": "j"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "main",
                "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_packed_object_comes_back_as_it_was_and_is_found_by_name() {
        let dictionary = Dictionary::default();
        let packed = Packed::pack(&pod(), job_of, &dictionary);
        assert_eq!(packed.unpack(), pod(), "every field read back");
        let json = serde_json::to_vec(&pod()).expect("json");
        assert!(
            packed.json.len() < json.len(),
            "{} bytes kept for {} of JSON",
            packed.json.len(),
            json.len()
        );
        assert_eq!(packed.owner(), Some("j"));
        // A later pod of the same shape keeps little more than what differs.
        let mut other = pod();
        other.metadata.name = Some("p-2".into());
        other.metadata.uid = Some("u-2".into());
        let alone = lz4_flex::compress_prepend_size(&serde_json::to_vec(&other).expect("json"));
        let against = Packed::pack(&other, job_of, &dictionary);
        assert!(
            against.json.len() * 2 < alone.len(),
            "{} bytes against the dictionary, {} alone",
            against.json.len(),
            alone.len()
        );
        assert_eq!(against.unpack(), other);
        let mut writer = Writer::<Packed<Pod>>::default();
        let store = writer.as_reader();
        let index = super::super::index::NameIndex::new(Packed::<Pod>::owner);
        apply(
            &watcher::Event::Apply(pod()),
            job_of,
            &dictionary,
            &index,
            &mut writer,
        );
        let cached = store
            .get(&ObjectRef::new("p-1").within("ns"))
            .expect("cached under its namespace and name");
        assert_eq!(cached.unpack(), pod());
        assert_eq!(index.lookup(&store, "ns", "j").len(), 1);
        apply(
            &watcher::Event::Delete(pod()),
            job_of,
            &dictionary,
            &index,
            &mut writer,
        );
        assert!(store.get(&ObjectRef::new("p-1").within("ns")).is_none());
        assert!(index.lookup(&store, "ns", "j").is_empty());
    }
}
