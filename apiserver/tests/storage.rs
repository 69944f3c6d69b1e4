//! PersistentVolumeClaims as a cluster with a local-path provisioner serves them: the
//! default class provisions and binds a volume per claim, pods mount it (and wait for it),
//! data outlives the pods, and the claim's deletion takes the volume and its directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};

struct Cluster {
    server: charon_apiserver::RunningServer,
    client: Client,
    work_dir: PathBuf,
}

async fn cluster() -> Cluster {
    let work_dir = std::env::temp_dir().join(format!(
        "charon-storage-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let config = charon_apiserver::Config {
        work_dir: Some(work_dir.clone()),
        ..charon_apiserver::Config::default().fast_backoff(Duration::from_millis(50))
    };
    let server = charon_apiserver::ApiServer::start(config)
        .await
        .expect("server starts");
    let client = Client::try_from(Config::new(server.url().parse().expect("url"))).expect("client");
    Cluster {
        server,
        client,
        work_dir,
    }
}

impl Cluster {
    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }
}

/// Polls `check` until it returns Some, failing after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn claim(name: &str, extra: Value) -> PersistentVolumeClaim {
    let mut claim = json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    json_patch::merge(&mut claim, &extra);
    serde_json::from_value(claim).expect("claim")
}

fn pod(name: &str, claim: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": claim}}],
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        },
    }))
    .expect("pod")
}

async fn phase_of(pods: &Api<Pod>, name: &str, want: &str) -> Pod {
    eventually(15, &format!("pod {name} to be {want}"), || async {
        let pod = pods.get(name).await.ok()?;
        let phase = pod.status.as_ref()?.phase.clone()?;
        (phase == want).then_some(pod)
    })
    .await
}

async fn bound(claims: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    eventually(10, &format!("claim {name} to bind"), || async {
        let claim = claims.get(name).await.ok()?;
        let phase = claim.status.as_ref()?.phase.clone()?;
        (phase == "Bound").then_some(claim)
    })
    .await
}

/// (type, reason, message) of the events about `name`, in order.
async fn events(client: &Client, name: &str) -> Vec<(String, String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events")
        .items;
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn claims_get_a_local_volume_that_outlives_their_pods() {
    let c = cluster().await;
    let (claims, volumes, pods) = (c.claims(), c.volumes(), c.pods());

    let classes: Api<StorageClass> = Api::all(c.client.clone());
    let standard = classes.get("standard").await.expect("the default class");
    assert_eq!(standard.provisioner, "rancher.io/local-path");
    assert_eq!(standard.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(standard.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(
        annotation(
            &standard.metadata,
            "storageclass.kubernetes.io/is-default-class"
        )
        .as_deref(),
        Some("true")
    );

    let created = claims
        .create(&PostParams::default(), &claim("data", json!({})))
        .await
        .expect("create");
    // Admission: the default class, and the protection finalizer.
    let spec = created.spec.clone().expect("spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(
        created.metadata.finalizers,
        Some(vec!["kubernetes.io/pvc-protection".to_string()])
    );
    let uid = created.metadata.uid.clone().expect("uid");

    let claim = bound(&claims, "data").await;
    let pv_name = format!("pvc-{uid}");
    assert_eq!(
        claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()),
        Some(pv_name.as_str())
    );
    let status = claim.status.clone().expect("status");
    assert_eq!(status.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(
        status
            .capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        Some("1Gi".to_string())
    );
    for (key, value) in [
        ("pv.kubernetes.io/bind-completed", "yes"),
        ("pv.kubernetes.io/bound-by-controller", "yes"),
        (
            "volume.kubernetes.io/storage-provisioner",
            "rancher.io/local-path",
        ),
    ] {
        assert_eq!(
            annotation(&claim.metadata, key).as_deref(),
            Some(value),
            "{key}"
        );
    }

    let pv = eventually(5, "the volume to be Bound", || async {
        let pv = volumes.get(&pv_name).await.ok()?;
        (pv.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pv)
    })
    .await;
    let pv_spec = pv.spec.clone().expect("pv spec");
    let claim_ref = pv_spec.claim_ref.clone().expect("claimRef");
    assert_eq!(
        (claim_ref.namespace.as_deref(), claim_ref.name.as_deref()),
        (Some("default"), Some("data"))
    );
    assert_eq!(claim_ref.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(pv_spec.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(
        pv_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(
        annotation(&pv.metadata, "pv.kubernetes.io/provisioned-by").as_deref(),
        Some("rancher.io/local-path")
    );
    let dir = PathBuf::from(pv_spec.host_path.expect("hostPath").path);
    assert_eq!(
        dir,
        c.work_dir
            .join("persistent")
            .join(format!("{pv_name}_default_data"))
    );
    assert!(dir.is_dir());
    let reasons: Vec<String> = events(&c.client, "data")
        .await
        .into_iter()
        .map(|(_, r, _)| r)
        .collect();
    assert_eq!(
        reasons,
        [
            "ExternalProvisioning",
            "Provisioning",
            "ProvisioningSucceeded"
        ]
    );

    // What one pod writes, a later one reads.
    pods.create(
        &PostParams::default(),
        &pod("writer", "data", "echo kept > /work/out.txt"),
    )
    .await
    .expect("writer");
    phase_of(&pods, "writer", "Succeeded").await;
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).expect("written"),
        "kept\n"
    );
    pods.create(
        &PostParams::default(),
        &pod("reader", "data", "cat /work/out.txt"),
    )
    .await
    .expect("reader");
    phase_of(&pods, "reader", "Succeeded").await;
    assert_eq!(
        pods.logs("reader", &LogParams::default())
            .await
            .expect("log"),
        "kept\n"
    );

    // Pods that name the claim hold it, finished or not, until they are gone.
    claims
        .delete("data", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = claims.get("data").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(dir.is_dir());
    for name in ["writer", "reader"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    eventually(10, "the claim, its volume and directory to go", || async {
        let gone = claims.get_opt("data").await.ok()?.is_none()
            && volumes.get_opt(&pv_name).await.ok()?.is_none()
            && !dir.exists();
        gone.then_some(())
    })
    .await;
    c.server.shutdown().await;
}

#[tokio::test]
async fn a_pod_waits_unscheduled_for_its_claim() {
    let c = cluster().await;
    let (claims, pods) = (c.claims(), c.pods());
    pods.create(
        &PostParams::default(),
        &pod("early", "later", "echo ran > /work/ran"),
    )
    .await
    .expect("pod");
    let expected = "0/1 nodes are available: persistentvolumeclaim \"later\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling..";
    eventually(5, "FailedScheduling", || async {
        let found = events(&c.client, "early").await;
        found
            .contains(&(
                "Warning".to_string(),
                "FailedScheduling".to_string(),
                expected.to_string(),
            ))
            .then_some(())
    })
    .await;
    let waiting = pods.get("early").await.expect("pod");
    assert_eq!(
        waiting.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        None
    );
    let status = waiting.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let scheduled = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("PodScheduled");
    assert_eq!(
        (
            scheduled.status.as_str(),
            scheduled.reason.as_deref(),
            scheduled.message.as_deref()
        ),
        ("False", Some("Unschedulable"), Some(expected))
    );

    claims
        .create(&PostParams::default(), &claim("later", json!({})))
        .await
        .expect("claim");
    let done = phase_of(&pods, "early", "Succeeded").await;
    assert_eq!(
        done.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("charon-dev")
    );
    c.server.shutdown().await;
}

#[tokio::test]
async fn claims_of_an_unknown_class_wait_for_it() {
    let c = cluster().await;
    let (claims, pods) = (c.claims(), c.pods());
    claims
        .create(
            &PostParams::default(),
            &claim("fast", json!({"spec": {"storageClassName": "fast"}})),
        )
        .await
        .expect("claim");
    let failure = (
        "Warning".to_string(),
        "ProvisioningFailed".to_string(),
        "storageclass.storage.k8s.io \"fast\" not found".to_string(),
    );
    eventually(5, "ProvisioningFailed", || async {
        events(&c.client, "fast")
            .await
            .contains(&failure)
            .then_some(())
    })
    .await;
    let pending = claims.get("fast").await.expect("claim");
    assert_eq!(
        pending.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    pods.create(&PostParams::default(), &pod("user", "fast", "true"))
        .await
        .expect("pod");
    eventually(5, "FailedScheduling", || async {
        events(&c.client, "user").await.iter().any(|(_, reason, message)| {
            reason == "FailedScheduling" && message.starts_with("0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption:")
        }).then_some(())
    })
    .await;

    // The class appears: the claim binds and the pod runs.
    let classes: Api<StorageClass> = Api::all(c.client.clone());
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "fast"}, "provisioner": "rancher.io/local-path",
    }))
    .expect("class");
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("class");
    bound(&claims, "fast").await;
    phase_of(&pods, "user", "Succeeded").await;

    // A class that waits for the first consumer binds once a pod is scheduled with it.
    let lazy: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "lazy"}, "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .expect("class");
    classes
        .create(&PostParams::default(), &lazy)
        .await
        .expect("class");
    claims
        .create(
            &PostParams::default(),
            &claim("lazy", json!({"spec": {"storageClassName": "lazy"}})),
        )
        .await
        .expect("claim");
    eventually(5, "WaitForFirstConsumer", || async {
        events(&c.client, "lazy")
            .await
            .iter()
            .any(|(_, reason, message)| {
                reason == "WaitForFirstConsumer"
                    && message == "waiting for first consumer to be created before binding"
            })
            .then_some(())
    })
    .await;
    pods.create(&PostParams::default(), &pod("consumer", "lazy", "true"))
        .await
        .expect("pod");
    let claim = bound(&claims, "lazy").await;
    assert_eq!(
        annotation(&claim.metadata, "volume.kubernetes.io/selected-node").as_deref(),
        Some("charon-dev")
    );
    phase_of(&pods, "consumer", "Succeeded").await;
    c.server.shutdown().await;
}

/// The status message of a refused write (and its code).
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn claims_are_validated_as_the_real_server_does() {
    let c = cluster().await;
    let (claims, pods) = (c.claims(), c.pods());
    let empty: PersistentVolumeClaim =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {}})).expect("claim");
    assert_eq!(
        refusal(claims.create(&PostParams::default(), &empty).await),
        (
            422,
            "PersistentVolumeClaim \"bad\" is invalid: [spec.accessModes: Required value: at least 1 access mode is required, spec.resources[storage]: Required value]".to_string()
        )
    );
    let raw = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "odd"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gb"}}}});
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        "default",
        &kube::api::ApiResource::erase::<PersistentVolumeClaim>(&()),
    );
    let odd: kube::api::DynamicObject = serde_json::from_value(raw).expect("object");
    assert_eq!(
        refusal(dynamic.create(&PostParams::default(), &odd).await),
        (
            400,
            "PersistentVolumeClaim in version \"v1\" cannot be handled as a PersistentVolumeClaim: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".to_string()
        )
    );
    let no_claim: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
        "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": ""}}],
        "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}))
    .expect("pod");
    assert_eq!(
        refusal(pods.create(&PostParams::default(), &no_claim).await),
        (
            422,
            "Pod \"p\" is invalid: spec.volumes[0].persistentVolumeClaim.claimName: Required value"
                .to_string()
        )
    );

    claims
        .create(&PostParams::default(), &claim("data", json!({})))
        .await
        .expect("claim");
    bound(&claims, "data").await;
    let patch = |value: Value| Patch::Merge(value);
    assert_eq!(
        refusal(
            claims
                .patch(
                    "data",
                    &PatchParams::default(),
                    &patch(json!({"spec": {"accessModes": ["ReadWriteMany"]}}))
                )
                .await
        ),
        (
            422,
            "PersistentVolumeClaim \"data\" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".to_string()
        )
    );
    // Growth is for classes that allow expansion, which the local-path one does not.
    assert_eq!(
        refusal(
            claims
                .patch(
                    "data",
                    &PatchParams::default(),
                    &patch(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}}))
                )
                .await
        ),
        (
            403,
            "persistentvolumeclaims \"data\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize".to_string()
        )
    );
    c.server.shutdown().await;
}
