//! Persistent storage as a cluster with a local-path dynamic provisioner serves it (kind's
//! `standard` class, rancher's local-path-provisioner): PersistentVolumeClaims,
//! PersistentVolumes and StorageClasses with the real server's defaults, admission and
//! checks, and one controller doing the work of the PV controller (binding, `Released`,
//! reclaiming), the provisioner `rancher.io/local-path` (a directory per volume under the
//! kubelet's work dir) and the PVC and PV protection controllers (a claim a scheduled pod
//! names, or a bound volume, is kept until that ends).
//!
//! The default class `standard` binds `Immediate`ly; a class with `WaitForFirstConsumer`
//! waits until the kubelet's scheduling picks a node for a pod using the claim.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::controllers::{self, Recorder, builtin, has_finalizer, modify, text};
use crate::error::{ApiError, FieldError};
use crate::registry::ResourceType;
use crate::state::AppState;
use crate::store::{Change, Write};

/// The group of StorageClasses.
pub const STORAGE_GROUP: &str = "storage.k8s.io";
/// The provisioner this module stands in for.
pub const LOCAL_PATH: &str = "rancher.io/local-path";
/// The class created at start, the default one.
pub const DEFAULT_CLASS: &str = "standard";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";
/// The pre-`storageClassName` way of naming a claim's class, still honoured.
const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// Where the scheduler records the node a `WaitForFirstConsumer` claim is for.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// How often the PV controller looks at every claim and volume again (its sync period).
const RESYNC: Duration = Duration::from_secs(15);
/// The provisioner's event source, as a deployed local-path-provisioner pod names itself.
const PROVISIONER_COMPONENT: &str = "rancher.io/local-path_local-path-provisioner-charon";

fn field<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    v.pointer(pointer).filter(|x| !x.is_null())
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// A resource quantity in its unit (bytes for storage), for comparisons; None when it does
/// not parse.
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => {
            let exponent: i32 = other.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exponent)
        }
    };
    Some(number * scale)
}

/// The quantity regular expression of the real server's decoder.
const QUANTITY_FORMAT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The decoder's check of the quantities in a claim's resources or a volume's capacity: one
/// that does not parse fails the whole request with 400, before any validation.
pub fn decodable(t: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let pointers: &[&str] = match (t.group.as_str(), t.plural.as_str()) {
        ("", "persistentvolumeclaims") => &["/spec/resources/requests", "/spec/resources/limits"],
        ("", "persistentvolumes") => &["/spec/capacity"],
        _ => return Ok(()),
    };
    let format = regex::Regex::new(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
        .map_err(|e| ApiError::internal(e.to_string()))?;
    for pointer in pointers {
        let values = obj.pointer(pointer).and_then(Value::as_object);
        for value in values.into_iter().flat_map(|m| m.values()) {
            let ok = match value {
                Value::Number(_) => true,
                Value::String(s) => format.is_match(s) && quantity(s).is_some(),
                _ => false,
            };
            if !ok {
                return Err(ApiError::undecodable(t, QUANTITY_FORMAT));
            }
        }
    }
    Ok(())
}

/// The `PersistentVolumeClaimResize` admission plugin: a larger request is for bound claims
/// whose class allows expansion (the local-path provisioner's does not).
pub fn admit_resize(
    t: &ResourceType,
    name: &str,
    old: &Value,
    new: &Value,
    class: Option<&Value>,
) -> Result<(), ApiError> {
    let size = |v: &Value| {
        v.pointer("/spec/resources/requests/storage")
            .and_then(Value::as_str)
            .and_then(quantity)
    };
    let (Some(before), Some(after)) = (size(old), size(new)) else {
        return Ok(());
    };
    if after <= before {
        return Ok(());
    }
    if text(old, "/status/phase") != "Bound" {
        return Err(ApiError::forbidden(
            t,
            name,
            "Only bound persistent volume claims can be expanded",
        ));
    }
    let expandable = class.is_some_and(|c| c.get("allowVolumeExpansion") == Some(&json!(true)));
    if !expandable {
        return Err(ApiError::forbidden(
            t,
            name,
            "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
        ));
    }
    Ok(())
}

/// `ValidatePersistentVolumeClaimSpec` on a new claim's spec (access modes, the storage
/// request, class name and volume mode), after the real defaults (`volumeMode: Filesystem`).
pub fn prepare_claim(obj: &mut Value) -> Vec<FieldError> {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if field(spec, "/volumeMode").is_none() {
        spec["volumeMode"] = json!("Filesystem");
    }
    let mut errors = Vec::new();
    let modes = spec.get("accessModes").and_then(Value::as_array);
    if modes.is_none_or(Vec::is_empty) {
        errors.push(FieldError::required(
            "spec.accessModes",
            "at least 1 access mode is required".to_string(),
        ));
    }
    let (mut once_pod, mut others) = (false, false);
    for mode in modes.into_iter().flatten() {
        if !ACCESS_MODES.iter().any(|m| mode == *m) {
            let options: Vec<Value> = ACCESS_MODES.iter().map(|m| json!(m)).collect();
            errors.push(FieldError::not_supported(
                "spec.accessModes",
                mode,
                &options,
            ));
        }
        if mode == "ReadWriteOncePod" {
            once_pod = true;
        } else {
            others = true;
        }
    }
    if once_pod && others {
        errors.push(FieldError::new(
            "spec.accessModes",
            "FieldValueForbidden",
            "Forbidden: may not use ReadWriteOncePod with other access modes".to_string(),
        ));
    }
    let at = "spec.resources[storage]";
    match field(spec, "/resources/requests/storage") {
        None => errors.push(FieldError::required(at, String::new())),
        Some(value) => {
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            // One that does not parse never gets here (`decodable`).
            match quantity(&shown) {
                Some(q) if q <= 0.0 => errors.push(FieldError::invalid(
                    at,
                    &json!(shown),
                    "must be greater than zero".to_string(),
                )),
                _ => {}
            }
        }
    }
    if let Some(class) = spec.get("storageClassName").and_then(Value::as_str)
        && !class.is_empty()
        && !crate::validation::is_dns_subdomain(class)
    {
        errors.push(FieldError::invalid(
            "spec.storageClassName",
            &json!(class),
            crate::validation::DNS1123_SUBDOMAIN.to_string(),
        ));
    }
    if let Some(mode) = field(spec, "/volumeMode")
        && mode != "Filesystem"
        && mode != "Block"
    {
        errors.push(FieldError::not_supported(
            "spec.volumeMode",
            mode,
            &[json!("Block"), json!("Filesystem")],
        ));
    }
    obj["status"] = json!({"phase": "Pending"});
    errors
}

/// `ValidatePersistentVolumeClaimUpdate`: a claim's spec stays as created, but for the
/// volume it binds to (once) and, while bound, a larger storage request.
pub fn claim_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut before = old.get("spec").cloned().unwrap_or(json!({}));
    let mut after = new.get("spec").cloned().unwrap_or(json!({}));
    if text(&before, "/volumeName").is_empty() {
        before["volumeName"] = after.get("volumeName").cloned().unwrap_or(Value::Null);
    }
    let bound = text(old, "/status/phase") == "Bound";
    let old_size = field(&before, "/resources/requests/storage").cloned();
    let new_size = field(&after, "/resources/requests/storage").cloned();
    if bound && let Some(requests) = after.pointer_mut("/resources/requests") {
        requests["storage"] = old_size.clone().unwrap_or(Value::Null);
    }
    // volumeAttributesClassName may change while bound, as resources.requests may.
    if bound {
        after["volumeAttributesClassName"] = before
            .get("volumeAttributesClassName")
            .cloned()
            .unwrap_or(Value::Null);
    }
    let normal = |v: &mut Value| {
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
        }
    };
    normal(&mut before);
    normal(&mut after);
    if before != after {
        errors.push(FieldError::new(
            "spec",
            "FieldValueForbidden",
            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".to_string(),
        ));
    }
    // With RecoverVolumeExpansionFailure (on in 1.33) a request may shrink back down to
    // just above what the volume has.
    let size = |v: Option<&Value>| v.and_then(Value::as_str).and_then(quantity);
    let capacity = size(old.pointer("/status/capacity/storage")).unwrap_or(0.0);
    if let (Some(old), Some(new)) = (size(old_size.as_ref()), size(new_size.as_ref()))
        && new < old
        && new <= capacity
    {
        errors.push(FieldError::new(
            "spec.resources.requests.storage",
            "FieldValueForbidden",
            "Forbidden: field can not be less than status.capacity".to_string(),
        ));
    }
    errors
}

/// A new PersistentVolume: the real defaults (`Retain`, `Filesystem`, phase `Pending`) and
/// the checks clients meet most (access modes and capacity).
pub fn prepare_volume(obj: &mut Value) -> Vec<FieldError> {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    for (key, default) in [
        ("persistentVolumeReclaimPolicy", json!("Retain")),
        ("volumeMode", json!("Filesystem")),
    ] {
        if field(spec, &format!("/{key}")).is_none() {
            spec[key] = default;
        }
    }
    let mut errors = Vec::new();
    if spec
        .get("accessModes")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        errors.push(FieldError::required("spec.accessModes", String::new()));
    }
    match spec.get("capacity").and_then(Value::as_object) {
        Some(c) if !c.is_empty() => {
            if c.len() > 1 || !c.contains_key("storage") {
                errors.push(FieldError::not_supported(
                    "spec.capacity",
                    &spec["capacity"],
                    &[json!("storage")],
                ));
            }
        }
        _ => errors.push(FieldError::required("spec.capacity", String::new())),
    }
    obj["status"] = json!({"phase": "Pending"});
    errors
}

/// A new StorageClass: `provisioner` required, `reclaimPolicy: Delete` and
/// `volumeBindingMode: Immediate` by default.
pub fn prepare_class(obj: &mut Value) -> Vec<FieldError> {
    for (key, default) in [
        ("reclaimPolicy", json!("Delete")),
        ("volumeBindingMode", json!("Immediate")),
    ] {
        if field(obj, &format!("/{key}")).is_none() {
            obj[key] = default;
        }
    }
    let mut errors = Vec::new();
    if text(obj, "/provisioner").is_empty() {
        errors.push(FieldError::required("provisioner", String::new()));
    }
    let policy = &obj["reclaimPolicy"];
    if policy != "Delete" && policy != "Retain" {
        errors.push(FieldError::not_supported(
            "reclaimPolicy",
            policy,
            &[json!("Delete"), json!("Retain")],
        ));
    }
    let mode = &obj["volumeBindingMode"];
    if mode != "Immediate" && mode != "WaitForFirstConsumer" {
        errors.push(FieldError::not_supported(
            "volumeBindingMode",
            mode,
            &[json!("Immediate"), json!("WaitForFirstConsumer")],
        ));
    }
    errors
}

fn is_default_class(class: &Value) -> bool {
    [DEFAULT_CLASS_ANNOTATION, BETA_DEFAULT_CLASS_ANNOTATION]
        .iter()
        .any(|a| {
            class
                .pointer("/metadata/annotations")
                .and_then(|m| m.get(*a))
                .and_then(Value::as_str)
                == Some("true")
        })
}

/// The admission plugins a claim passes on create: `DefaultStorageClass` gives a claim that
/// names no class (neither `storageClassName` nor the beta annotation; an empty name is a
/// choice) the default class, the newest when several claim to be; with `protect`,
/// `StorageObjectInUseProtection` adds the protection finalizer.
pub fn admit_claim(classes: &[Arc<Value>], obj: &mut Value, protect: bool) {
    let annotated = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
        .is_some();
    if field(obj, "/spec/storageClassName").is_none() && !annotated {
        let default = classes
            .iter()
            .filter(|c| is_default_class(c))
            .max_by(|a, b| {
                text(a, "/metadata/creationTimestamp")
                    .cmp(text(b, "/metadata/creationTimestamp"))
                    .then_with(|| text(b, "/metadata/name").cmp(text(a, "/metadata/name")))
            });
        if let Some(class) = default {
            obj["spec"]["storageClassName"] = json!(text(class, "/metadata/name"));
        }
    }
    if protect {
        add_finalizer(obj, PVC_PROTECTION);
    }
}

/// `StorageObjectInUseProtection` for a new PersistentVolume.
pub fn admit_volume(obj: &mut Value, protect: bool) {
    if protect {
        add_finalizer(obj, PV_PROTECTION);
    }
}

fn add_finalizer(obj: &mut Value, finalizer: &str) {
    if !obj
        .pointer("/metadata/finalizers")
        .is_some_and(Value::is_array)
    {
        obj["metadata"]["finalizers"] = json!([]);
    }
    if let Some(list) = obj["metadata"]["finalizers"].as_array_mut()
        && !list.iter().any(|f| f == finalizer)
    {
        list.push(json!(finalizer));
    }
}

/// A claim's class: the beta annotation, else `storageClassName`, else "".
pub fn claim_class(claim: &Value) -> &str {
    claim
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or_else(|| text(claim, "/spec/storageClassName"))
}

/// The claims a pod's volumes name, in order.
pub fn pod_claims(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName"))
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Where a PersistentVolume's data is on this machine (hostPath or local volumes).
pub fn volume_path(pv: &Value) -> Option<PathBuf> {
    ["/spec/hostPath/path", "/spec/local/path"]
        .iter()
        .map(|p| text(pv, p))
        .find(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The types the controller works on.
struct Types {
    claims: ResourceType,
    volumes: ResourceType,
    classes: ResourceType,
    pods: ResourceType,
}

struct Ctx {
    state: Arc<AppState>,
    types: Types,
    /// `<kubelet work dir>/persistent`, where provisioned volumes live.
    root: PathBuf,
    node: String,
    /// Events as the PV controller.
    controller: Recorder,
    /// Events as the provisioner.
    provisioner: Recorder,
}

/// Creates the default class and runs the controller until the task is aborted. Volumes go
/// under `work_dir/persistent`, on the node `node`.
pub async fn run(state: Arc<AppState>, work_dir: PathBuf, node: String) {
    let store = &state.store;
    let (Some(claims), Some(volumes), Some(classes), Some(pods)) = (
        builtin(store, "", "persistentvolumeclaims"),
        builtin(store, "", "persistentvolumes"),
        store.find_type(STORAGE_GROUP, "v1", "storageclasses"),
        builtin(store, "", "pods"),
    ) else {
        return;
    };
    let ctx = Ctx {
        state: state.clone(),
        types: Types {
            claims,
            volumes,
            classes,
            pods,
        },
        root: work_dir.join("persistent"),
        node,
        controller: Recorder::new("persistentvolume-controller", None),
        provisioner: Recorder::new(PROVISIONER_COMPONENT, None),
    };
    let mut events = ctx.state.store.changes();
    let mut dirty = Dirty::default();
    dirty.everything(&ctx);
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Dirty {
            claims,
            volumes,
            gone_claims,
        } = std::mem::take(&mut dirty);
        for (i, uid) in gone_claims.into_iter().enumerate() {
            controllers::pace(i).await;
            claim_gone(&ctx, &uid, &mut dirty);
        }
        for (i, (ns, name)) in claims.into_iter().enumerate() {
            controllers::pace(i).await;
            sync_claim(&ctx, &ns, &name, &mut dirty);
        }
        for (i, name) in volumes.into_iter().enumerate() {
            controllers::pace(i).await;
            sync_volume(&ctx, &name, &mut dirty);
        }
        if !dirty.is_empty() {
            continue;
        }
        tokio::select! {
            open = events.next_batch(|change| match change {
                Change::Event(e) => dirty.observe(&ctx, &e),
                Change::Missed => dirty.everything(&ctx),
            }) => if !open { return },
            _ = resync.tick() => dirty.everything(&ctx),
        }
    }
}

/// What is left to look at.
#[derive(Default)]
struct Dirty {
    claims: HashSet<(String, String)>,
    volumes: HashSet<String>,
    /// Uids of claims removed from the store, whose volumes are to be released.
    gone_claims: HashSet<String>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.volumes.is_empty() && self.gone_claims.is_empty()
    }

    fn everything(&mut self, ctx: &Ctx) {
        let store = &ctx.state.store;
        self.claims.extend(store.names(&ctx.types.claims));
        self.volumes
            .extend(store.names(&ctx.types.volumes).into_iter().map(|(_, n)| n));
    }

    fn observe(&mut self, ctx: &Ctx, e: &crate::store::Event) {
        let name = text(&e.object, "/metadata/name").to_string();
        match e.type_key.as_str() {
            "/persistentvolumeclaims" => {
                if e.kind == "DELETED" {
                    self.gone_claims
                        .insert(text(&e.object, "/metadata/uid").to_string());
                } else {
                    self.claims.insert((e.namespace.clone(), name));
                }
            }
            "/persistentvolumes" => {
                let claim_ref = &e.object["spec"]["claimRef"];
                if claim_ref.is_object() {
                    self.claims.insert((
                        text(claim_ref, "/namespace").to_string(),
                        text(claim_ref, "/name").to_string(),
                    ));
                }
                if e.kind != "DELETED" {
                    self.volumes.insert(name);
                }
            }
            "storage.k8s.io/storageclasses" => {
                // A class that appears may be what a pending claim waits for.
                self.claims.extend(
                    ctx.state
                        .store
                        .select(&ctx.types.claims, "", |c| {
                            text(c, "/spec/volumeName").is_empty()
                        })
                        .iter()
                        .map(|c| {
                            (
                                text(c, "/metadata/namespace").to_string(),
                                text(c, "/metadata/name").to_string(),
                            )
                        }),
                );
            }
            // A pod's end may free a claim being deleted; its scheduling may pick a node
            // for a claim that waits for a consumer.
            "/pods" => {
                for claim in pod_claims(&e.object) {
                    self.claims.insert((e.namespace.clone(), claim));
                }
            }
            _ => {}
        }
    }
}

/// Whether a scheduled pod names the claim: the PVC protection controller keeps the claim
/// while any does, whatever the pod's phase, until the pod object is gone.
fn in_use(ctx: &Ctx, ns: &str, name: &str) -> bool {
    !ctx.state
        .store
        .select(&ctx.types.pods, ns, |p| {
            !text(p, "/spec/nodeName").is_empty() && pod_claims(p).iter().any(|c| c == name)
        })
        .is_empty()
}

fn sync_claim(ctx: &Ctx, ns: &str, name: &str, dirty: &mut Dirty) {
    let store = &ctx.state.store;
    let Ok(claim) = store.get(&ctx.types.claims, ns, name) else {
        return;
    };
    if deleting(&claim) {
        if has_finalizer(&claim, PVC_PROTECTION) && !in_use(ctx, ns, name) {
            controllers::remove_finalizer(store, &ctx.types.claims, ns, name, PVC_PROTECTION);
        }
        return;
    }
    let volume_name = text(&claim, "/spec/volumeName").to_string();
    if !volume_name.is_empty() {
        let pv = store.get(&ctx.types.volumes, "", &volume_name).ok();
        match pv {
            Some(pv) => {
                set_claim_bound(ctx, &claim, &pv);
                dirty.volumes.insert(volume_name);
            }
            None if text(&claim, "/status/phase") == "Bound" => {
                set_claim_phase(ctx, &claim, "Lost");
                ctx.controller.record(
                    store,
                    &claim,
                    None,
                    "Warning",
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                );
            }
            None => {}
        }
        return;
    }
    if let Some(pv) = matching_volume(ctx, &claim) {
        bind(ctx, &claim, &pv, true);
        return;
    }
    let class_name = claim_class(&claim).to_string();
    if class_name.is_empty() {
        ctx.controller.record(
            store,
            &claim,
            None,
            "Normal",
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        );
        return;
    }
    let Ok(class) = store.get(&ctx.types.classes, "", &class_name) else {
        ctx.controller.record(
            store,
            &claim,
            None,
            "Warning",
            "ProvisioningFailed",
            &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        );
        return;
    };
    let selected = claim
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SELECTED_NODE))
        .and_then(Value::as_str)
        .map(str::to_string);
    if text(&class, "/volumeBindingMode") == "WaitForFirstConsumer" && selected.is_none() {
        ctx.controller.record(
            store,
            &claim,
            None,
            "Normal",
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        );
        return;
    }
    let provisioner = text(&class, "/provisioner").to_string();
    let Some(claim) = annotate_provisioner(ctx, &claim, &provisioner) else {
        return;
    };
    ctx.controller.record(
        store,
        &claim,
        None,
        "Normal",
        "ExternalProvisioning",
        &format!(
            "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
        ),
    );
    if provisioner != LOCAL_PATH {
        // Nobody here provisions for it: it stays Pending, as with a provisioner not running.
        return;
    }
    let node = selected.unwrap_or_else(|| ctx.node.clone());
    if let Some(pv) = provision(ctx, &claim, &class, &node) {
        bind(ctx, &claim, &pv, false);
    }
}

/// Records the provisioner the claim waits for, as the PV controller does; the claim as
/// stored after.
fn annotate_provisioner(ctx: &Ctx, claim: &Value, provisioner: &str) -> Option<Value> {
    let ns = text(claim, "/metadata/namespace");
    let name = text(claim, "/metadata/name");
    let uid = text(claim, "/metadata/uid").to_string();
    let written = modify(&ctx.state.store, &ctx.types.claims, ns, name, false, |c| {
        if text(c, "/metadata/uid") != uid {
            return false;
        }
        let mut changed = false;
        if !c
            .pointer("/metadata/annotations")
            .is_some_and(Value::is_object)
        {
            c["metadata"]["annotations"] = json!({});
        }
        for key in [
            "volume.beta.kubernetes.io/storage-provisioner",
            "volume.kubernetes.io/storage-provisioner",
        ] {
            if c["metadata"]["annotations"].get(key) != Some(&json!(provisioner)) {
                c["metadata"]["annotations"][key] = json!(provisioner);
                changed = true;
            }
        }
        changed
    });
    match written {
        Ok(Some(c)) if text(&c, "/metadata/uid") == uid => Some(c),
        Ok(_) => None,
        Err(err) => {
            tracing::debug!(%err, claim = name, "annotating a claim");
            None
        }
    }
}

/// An Available volume that can hold the claim (its class, access modes and size), or one
/// already reserved for it.
fn matching_volume(ctx: &Ctx, claim: &Value) -> Option<Value> {
    let uid = text(claim, "/metadata/uid");
    let ns = text(claim, "/metadata/namespace");
    let name = text(claim, "/metadata/name");
    let class = claim_class(claim);
    let modes = strings(claim, "/spec/accessModes");
    let wanted = claim
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(quantity)
        .unwrap_or(0.0);
    let mut candidates = ctx.state.store.select(&ctx.types.volumes, "", |pv| {
        if deleting(pv) {
            return false;
        }
        let claim_ref = &pv["spec"]["claimRef"];
        if claim_ref.is_object() {
            return text(claim_ref, "/namespace") == ns
                && text(claim_ref, "/name") == name
                && [uid, ""].contains(&text(claim_ref, "/uid"));
        }
        let size = pv
            .pointer("/spec/capacity/storage")
            .and_then(Value::as_str)
            .and_then(quantity)
            .unwrap_or(0.0);
        let offered = strings(pv, "/spec/accessModes");
        text(pv, "/status/phase") == "Available"
            && text(pv, "/spec/storageClassName") == class
            && size >= wanted
            && modes.iter().all(|m| offered.contains(m))
    });
    // The smallest that fits, as the PV controller chooses.
    candidates.sort_by(|a, b| {
        let size = |pv: &Value| {
            pv.pointer("/spec/capacity/storage")
                .and_then(Value::as_str)
                .and_then(quantity)
                .unwrap_or(0.0)
        };
        size(a).total_cmp(&size(b))
    });
    candidates.into_iter().next()
}

/// What the local-path provisioner does: a directory `pvc-<uid>_<namespace>_<name>` and a
/// PersistentVolume `pvc-<uid>` of the claim's size and modes for it.
fn provision(ctx: &Ctx, claim: &Value, class: &Value, node: &str) -> Option<Value> {
    let store = &ctx.state.store;
    let ns = text(claim, "/metadata/namespace");
    let name = text(claim, "/metadata/name");
    let pv_name = format!("pvc-{}", text(claim, "/metadata/uid"));
    if let Ok(existing) = store.get(&ctx.types.volumes, "", &pv_name) {
        return Some(existing);
    }
    ctx.provisioner.record(
        store,
        claim,
        None,
        "Normal",
        "Provisioning",
        &format!("External provisioner is provisioning volume for claim \"{ns}/{name}\""),
    );
    let dir = ctx.root.join(format!("{pv_name}_{ns}_{name}"));
    if let Err(err) = std::fs::create_dir_all(&dir) {
        ctx.provisioner.record(
            store,
            claim,
            None,
            "Warning",
            "ProvisioningFailed",
            &format!(
                "failed to provision volume with StorageClass \"{}\": {err}",
                text(class, "/metadata/name")
            ),
        );
        return None;
    }
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {
                "pv.kubernetes.io/provisioned-by": LOCAL_PATH,
                "local.path.provisioner/selected-node": node,
            },
        },
        "spec": {
            "accessModes": claim.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
            "capacity": {"storage": claim.pointer("/spec/resources/requests/storage").cloned().unwrap_or(Value::Null)},
            "claimRef": claim_ref(claim),
            "hostPath": {"path": dir.display().to_string(), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            "persistentVolumeReclaimPolicy": text(class, "/reclaimPolicy"),
            "storageClassName": text(class, "/metadata/name"),
            "volumeMode": "Filesystem",
        },
    });
    match store.create(&ctx.types.volumes, "", pv, Write::default()) {
        Ok(created) => {
            ctx.provisioner.record(
                store,
                claim,
                None,
                "Normal",
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {pv_name}"),
            );
            Some(Value::clone(&created))
        }
        Err(err) => {
            tracing::debug!(%err, claim = name, "provisioning a volume");
            store.get(&ctx.types.volumes, "", &pv_name).ok()
        }
    }
}

fn claim_ref(claim: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "name": text(claim, "/metadata/name"),
        "namespace": text(claim, "/metadata/namespace"),
        "uid": text(claim, "/metadata/uid"),
        "resourceVersion": text(claim, "/metadata/resourceVersion"),
    })
}

/// The PV controller's bind: the volume names the claim (`bound-by-controller` when it was
/// the controller that chose it) and is Bound; the claim names the volume and is Bound with
/// the volume's capacity and modes.
fn bind(ctx: &Ctx, claim: &Value, pv: &Value, chosen: bool) {
    let store = &ctx.state.store;
    let pv_name = text(pv, "/metadata/name").to_string();
    let uid = text(claim, "/metadata/uid").to_string();
    let reference = claim_ref(claim);
    let written = modify(store, &ctx.types.volumes, "", &pv_name, false, |v| {
        if text(v, "/spec/claimRef/uid") == uid {
            return false;
        }
        v["spec"]["claimRef"] = reference.clone();
        if chosen {
            if !v
                .pointer("/metadata/annotations")
                .is_some_and(Value::is_object)
            {
                v["metadata"]["annotations"] = json!({});
            }
            v["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        }
        true
    });
    let pv = match written {
        Ok(Some(pv)) => pv,
        _ => return,
    };
    set_volume_phase(ctx, &pv, "Bound");
    let ns = text(claim, "/metadata/namespace");
    let name = text(claim, "/metadata/name");
    let bound = modify(store, &ctx.types.claims, ns, name, false, |c| {
        if text(c, "/metadata/uid") != uid || !text(c, "/spec/volumeName").is_empty() {
            return false;
        }
        c["spec"]["volumeName"] = json!(pv_name);
        if !c
            .pointer("/metadata/annotations")
            .is_some_and(Value::is_object)
        {
            c["metadata"]["annotations"] = json!({});
        }
        c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        c["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        true
    });
    if let Ok(Some(claim)) = bound {
        set_claim_bound(ctx, &claim, &pv);
    }
}

fn set_claim_bound(ctx: &Ctx, claim: &Value, pv: &Value) {
    let mut status = claim.get("status").cloned().unwrap_or(json!({}));
    status["phase"] = json!("Bound");
    status["accessModes"] = pv
        .pointer("/spec/accessModes")
        .cloned()
        .unwrap_or(json!([]));
    status["capacity"] = pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}));
    write_status(ctx, &ctx.types.claims, claim, &status);
}

fn set_claim_phase(ctx: &Ctx, claim: &Value, phase: &str) {
    let mut status = claim.get("status").cloned().unwrap_or(json!({}));
    status["phase"] = json!(phase);
    write_status(ctx, &ctx.types.claims, claim, &status);
}

fn set_volume_phase(ctx: &Ctx, pv: &Value, phase: &str) {
    let mut status = pv.get("status").cloned().unwrap_or(json!({}));
    if status["phase"] == phase {
        return;
    }
    status["phase"] = json!(phase);
    // The real controller stamps the time of every phase change.
    status["lastPhaseTransitionTime"] = json!(controllers::now());
    write_status(ctx, &ctx.types.volumes, pv, &status);
}

fn write_status(ctx: &Ctx, t: &ResourceType, obj: &Value, status: &Value) {
    let result = controllers::write_status(
        &ctx.state.store,
        t,
        text(obj, "/metadata/namespace"),
        text(obj, "/metadata/name"),
        text(obj, "/metadata/uid"),
        status,
    );
    if let Err(err) = result {
        tracing::debug!(%err, name = text(obj, "/metadata/name"), "writing storage status");
    }
}

/// A claim is gone: the volumes bound to it are looked at again (and released).
fn claim_gone(ctx: &Ctx, uid: &str, dirty: &mut Dirty) {
    let bound = ctx.state.store.select(&ctx.types.volumes, "", |pv| {
        text(pv, "/spec/claimRef/uid") == uid
    });
    dirty.volumes.extend(
        bound
            .iter()
            .map(|pv| text(pv, "/metadata/name").to_string()),
    );
}

fn sync_volume(ctx: &Ctx, name: &str, dirty: &mut Dirty) {
    let store = &ctx.state.store;
    let Ok(pv) = store.get(&ctx.types.volumes, "", name) else {
        return;
    };
    if deleting(&pv) {
        // PV protection holds a volume while a claim is bound to it.
        if has_finalizer(&pv, PV_PROTECTION) && text(&pv, "/status/phase") != "Bound" {
            controllers::remove_finalizer(store, &ctx.types.volumes, "", name, PV_PROTECTION);
        }
        return;
    }
    let claim_ref = pv["spec"]["claimRef"].clone();
    if !claim_ref.is_object() {
        if matches!(text(&pv, "/status/phase"), "" | "Pending") {
            set_volume_phase(ctx, &pv, "Available");
        }
        return;
    }
    let ns = text(&claim_ref, "/namespace");
    let claim_name = text(&claim_ref, "/name");
    let ref_uid = text(&claim_ref, "/uid");
    let claim = store
        .get(&ctx.types.claims, ns, claim_name)
        .ok()
        .filter(|c| ref_uid.is_empty() || text(c, "/metadata/uid") == ref_uid);
    match claim {
        Some(claim) => {
            if text(&claim, "/spec/volumeName") == name {
                set_volume_phase(ctx, &pv, "Bound");
            } else {
                dirty
                    .claims
                    .insert((ns.to_string(), claim_name.to_string()));
            }
        }
        None => {
            if text(&pv, "/status/phase") != "Released" {
                set_volume_phase(ctx, &pv, "Released");
            }
            if text(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" {
                reclaim(ctx, &pv);
            }
        }
    }
}

/// Deletes a released volume whose policy is Delete: the provisioner removes its directory
/// (only ever one it made) and the volume object.
fn reclaim(ctx: &Ctx, pv: &Value) {
    let name = text(pv, "/metadata/name");
    let ours = pv
        .pointer("/metadata/annotations/pv.kubernetes.io~1provisioned-by")
        .and_then(Value::as_str)
        == Some(LOCAL_PATH);
    if !ours {
        // Another provisioner's volume: nobody here deletes it.
        return;
    }
    if let Some(dir) = volume_path(pv).filter(|d| inside(&ctx.root, d))
        && let Err(err) = std::fs::remove_dir_all(&dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!(%err, volume = name, "removing a volume's directory");
        return;
    }
    let deleted = crate::gc::delete_object(
        &ctx.state,
        &ctx.types.volumes,
        "",
        name,
        crate::gc::Propagation::Background,
    );
    if let Err(err) = deleted
        && err.code != 404
    {
        tracing::debug!(%err, volume = name, "deleting a released volume");
    }
}

/// Whether `dir` is a directory strictly under `root` (no `..` in it).
fn inside(root: &Path, dir: &Path) -> bool {
    dir != root
        && dir.starts_with(root)
        && !dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// The default class the server starts with, as kind's (but binding at once).
pub fn default_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": LOCAL_PATH,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    })
}

/// What keeps a pod that uses claims from being scheduled, as the scheduler's VolumeBinding
/// plugin finds it: `Err(Some(reason))` to report, `Err(None)` to wait quietly (a claim
/// waiting for its first consumer, now picked to be provisioned on `node`).
pub fn claims_block(state: &AppState, pod: &Value, node: &str) -> Result<(), Option<String>> {
    let store = &state.store;
    let claims = pod_claims(pod);
    if claims.is_empty() {
        return Ok(());
    }
    let (Some(claim_type), Some(classes)) = (
        builtin(store, "", "persistentvolumeclaims"),
        store.find_type(STORAGE_GROUP, "v1", "storageclasses"),
    ) else {
        return Ok(());
    };
    let ns = text(pod, "/metadata/namespace");
    let mut unbound_immediate = false;
    let mut waiting = false;
    for name in claims {
        let Ok(claim) = store.get(&claim_type, ns, &name) else {
            return Err(Some(format!("persistentvolumeclaim \"{name}\" not found")));
        };
        if deleting(&claim) {
            return Err(Some(format!(
                "persistentvolumeclaim \"{name}\" is being deleted"
            )));
        }
        if !text(&claim, "/spec/volumeName").is_empty() {
            continue;
        }
        let delayed = store
            .get(&classes, "", claim_class(&claim))
            .is_ok_and(|c| text(&c, "/volumeBindingMode") == "WaitForFirstConsumer");
        if !delayed {
            unbound_immediate = true;
            continue;
        }
        waiting = true;
        let selected = claim
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SELECTED_NODE))
            .is_some();
        if !selected {
            let result = modify(store, &claim_type, ns, &name, false, |c| {
                if !c
                    .pointer("/metadata/annotations")
                    .is_some_and(Value::is_object)
                {
                    c["metadata"]["annotations"] = json!({});
                }
                c["metadata"]["annotations"][SELECTED_NODE] = json!(node);
                true
            });
            if let Err(err) = result {
                tracing::debug!(%err, claim = name, "selecting a node for a claim");
            }
        }
    }
    if unbound_immediate {
        return Err(Some(
            "pod has unbound immediate PersistentVolumeClaims".to_string(),
        ));
    }
    if waiting {
        return Err(None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(errors: Vec<FieldError>) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn quantities_compare_in_bytes() {
        assert_eq!(quantity("1Gi"), Some(1024f64.powi(3)));
        assert_eq!(quantity("500M"), Some(5e8));
        assert_eq!(quantity("1.5Ki"), Some(1536.0));
        assert_eq!(quantity("2e3"), Some(2000.0));
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("1Gb"), None);
    }

    #[test]
    fn claims_need_modes_and_a_size() {
        let mut claim = json!({"spec": {}});
        assert_eq!(
            messages(prepare_claim(&mut claim)),
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
        let mut claim = json!({"spec": {"accessModes": ["ReadWriteOncePod", "Sometimes"],
            "resources": {"requests": {"storage": "0"}}}});
        assert_eq!(
            messages(prepare_claim(&mut claim)),
            [
                "spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
                "spec.resources[storage]: Invalid value: \"0\": must be greater than zero",
            ]
        );
        let mut ok = json!({"spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}});
        assert!(prepare_claim(&mut ok).is_empty());
        assert_eq!(ok["spec"]["volumeMode"], "Filesystem");
        assert_eq!(ok["status"]["phase"], "Pending");
    }

    #[test]
    fn a_claims_spec_is_immutable_but_for_growth_while_bound() {
        let spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "standard", "volumeMode": "Filesystem"});
        let old = json!({"spec": spec, "status": {"phase": "Pending"}});
        // Binding sets the volume once.
        let mut binding = old.clone();
        binding["spec"]["volumeName"] = json!("pvc-1");
        assert!(claim_update(&old, &binding).is_empty());
        let mut other_class = old.clone();
        other_class["spec"]["storageClassName"] = json!("fast");
        assert_eq!(
            messages(claim_update(&old, &other_class)),
            [
                "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
            ]
        );
        let mut bound = binding.clone();
        bound["status"] = json!({"phase": "Bound", "capacity": {"storage": "1Gi"}});
        let mut grown = bound.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(claim_update(&bound, &grown).is_empty());
        let mut shrunk = bound.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        assert_eq!(
            messages(claim_update(&bound, &shrunk)),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity"
            ]
        );
        // Unbound, the size is as fixed as the rest.
        let mut unbound_growth = old.clone();
        unbound_growth["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(claim_update(&old, &unbound_growth).len(), 1);
    }

    #[test]
    fn the_newest_default_class_is_given_to_claims_without_one() {
        let class = |name: &str, created: &str, default: bool| {
            let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}});
            if default {
                c["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
            }
            Arc::new(c)
        };
        let classes = [
            class("standard", "2026-01-01T00:00:00Z", true),
            class("newer", "2026-01-02T00:00:00Z", true),
            class("plain", "2026-01-03T00:00:00Z", false),
        ];
        let mut claim = json!({"metadata": {}, "spec": {}});
        admit_claim(&classes, &mut claim, true);
        assert_eq!(claim["spec"]["storageClassName"], "newer");
        assert_eq!(claim["metadata"]["finalizers"], json!([PVC_PROTECTION]));
        // An empty class is a choice: no class.
        let mut none = json!({"metadata": {}, "spec": {"storageClassName": ""}});
        admit_claim(&classes, &mut none, false);
        assert_eq!(none["spec"]["storageClassName"], "");
        assert!(none["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn only_directories_under_the_root_are_removed() {
        let root = Path::new("/work/persistent");
        assert!(inside(
            root,
            Path::new("/work/persistent/pvc-1_default_data")
        ));
        assert!(!inside(root, root));
        assert!(!inside(root, Path::new("/work/persistent/../etc")));
        assert!(!inside(root, Path::new("/srv/data")));
    }
}
