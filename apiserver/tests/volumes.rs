//! Pods and Jobs whose volumes would write outside the volume are refused as the real server
//! refuses them: 422 Invalid, with its field paths and messages.

use charon_apiserver::{ApiServer, Config};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, Error};
use serde_json::{Value, json};

const LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// The create's 422 message, or "" when it was accepted.
async fn refusal<K>(api: &Api<K>, object: Value) -> String
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let object: K = serde_json::from_value(object).expect("object");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => String::new(),
        Err(Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert_eq!(status.reason, "Invalid", "{status:?}");
            status.message
        }
        Err(other) => panic!("{other}"),
    }
}

fn pod(name: &str, volumes: Value, mounts: Value) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "volumes": volumes,
            "containers": [{"name": "main", "image": "busybox", "command": ["true"],
                "volumeMounts": mounts}],
        },
    })
}

#[tokio::test]
async fn volumes_that_leave_the_volume_are_refused() {
    let server = ApiServer::start(Config::default().api_only())
        .await
        .expect("starts");
    let client =
        Client::try_from(kube::Config::new(server.url().parse().expect("url"))).expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client, "default");

    let message = refusal(
        &pods,
        pod("a", json!([{"name": "../../x", "emptyDir": {}}]), json!([])),
    )
    .await;
    assert_eq!(
        message,
        format!("Pod \"a\" is invalid: spec.volumes[0].name: Invalid value: \"../../x\": {LABEL}")
    );

    let message = refusal(
        &pods,
        pod(
            "b",
            json!([{"name": "data", "emptyDir": {}}]),
            json!([{"name": "data", "mountPath": "/data", "subPath": "../x"}]),
        ),
    )
    .await;
    assert_eq!(
        message,
        "Pod \"b\" is invalid: spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../x\": must not contain '..'"
    );

    let message = refusal(
        &pods,
        pod(
            "c",
            json!([
                {"name": "creds", "secret": {"secretName": "s", "items": [
                    {"key": "a", "path": "/etc/passwd"},
                    {"key": "b", "path": "x/../../y"},
                    {"key": "c", "path": "..hidden"},
                    {"key": "d", "path": "fine/name"},
                ]}},
                {"name": "conf", "configMap": {"name": "m", "items": [{"key": "k", "path": "../k"}]}},
            ]),
            json!([{"name": "creds", "mountPath": "/creds", "subPath": "/abs"}]),
        ),
    )
    .await;
    assert_eq!(
        message,
        "Pod \"c\" is invalid: [spec.volumes[0].secret.items[0].path: Invalid value: \"/etc/passwd\": must be a relative path, \
         spec.volumes[0].secret.items[1].path: Invalid value: \"x/../../y\": must not contain '..', \
         spec.volumes[0].secret.items[2].path: Invalid value: \"..hidden\": must not start with '..', \
         spec.volumes[1].configMap.items[0].path: Invalid value: \"../k\": must not contain '..', \
         spec.containers[0].volumeMounts[0].subPath: Invalid value: \"/abs\": must be a relative path]"
    );

    // A Job's pod template is checked the same way, under its own path.
    let mut job = json!({
        "metadata": {"name": "j"},
        "spec": {"template": pod("", json!([{"name": "Data", "emptyDir": {}}]),
            json!([{"name": "other", "mountPath": "/x"}]))},
    });
    job["spec"]["template"]
        .as_object_mut()
        .expect("template")
        .remove("metadata");
    let message = refusal(&jobs, job).await;
    assert_eq!(
        message,
        format!(
            "Job.batch \"j\" is invalid: [spec.template.spec.volumes[0].name: Invalid value: \"Data\": {LABEL}, \
             spec.template.spec.containers[0].volumeMounts[0].name: Not found: \"other\"]"
        )
    );

    // Well-formed volumes pass.
    let ok = refusal(
        &pods,
        pod(
            "fine",
            json!([{"name": "data", "configMap": {"name": "m", "items": [{"key": "k", "path": "sub/k.txt"}]}}]),
            json!([{"name": "data", "mountPath": "/data", "subPath": "sub"}]),
        ),
    )
    .await;
    assert_eq!(ok, "");
    server.shutdown().await;
}
