//! The downward API: the values of a pod's `fieldRef` paths, for env vars and
//! `downwardAPI` volume files alike.

use serde_json::Value;

use super::status::LOCAL_IP;
use crate::controllers::text;

/// The value of a downward-API field path.
pub fn field_ref(pod: &Value, path: &str) -> String {
    let map_entry = |field: &str, rest: &str| -> String {
        let key = rest
            .trim_start_matches("['")
            .trim_start_matches("[\"")
            .trim_end_matches("']")
            .trim_end_matches("\"]");
        text(
            pod,
            &format!(
                "/metadata/{field}/{}",
                key.replace('~', "~0").replace('/', "~1")
            ),
        )
        .to_string()
    };
    let map_all = |field: &str| -> String {
        pod.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => text(pod, "/metadata/name").into(),
        "metadata.namespace" => text(pod, "/metadata/namespace").into(),
        "metadata.uid" => text(pod, "/metadata/uid").into(),
        "metadata.labels" => map_all("labels"),
        "metadata.annotations" => map_all("annotations"),
        "spec.nodeName" => text(pod, "/spec/nodeName").into(),
        "spec.serviceAccountName" => match text(pod, "/spec/serviceAccountName") {
            "" => "default".into(),
            s => s.into(),
        },
        "status.podIP" | "status.hostIP" => LOCAL_IP.into(),
        "status.podIPs" | "status.hostIPs" => LOCAL_IP.into(),
        p if p.starts_with("metadata.labels[") => {
            map_entry("labels", &p["metadata.labels".len()..])
        }
        p if p.starts_with("metadata.annotations[") => {
            map_entry("annotations", &p["metadata.annotations".len()..])
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_paths_read_the_pod_as_the_kubelet_does() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                "labels": {"app": "x", "a/b": "y"}, "annotations": {"note": "n"}},
            "spec": {"nodeName": "node"},
        });
        assert_eq!(field_ref(&pod, "metadata.name"), "p");
        assert_eq!(field_ref(&pod, "metadata.namespace"), "ns");
        assert_eq!(field_ref(&pod, "metadata.uid"), "u");
        assert_eq!(field_ref(&pod, "spec.nodeName"), "node");
        // No service account named: the default one.
        assert_eq!(field_ref(&pod, "spec.serviceAccountName"), "default");
        assert_eq!(field_ref(&pod, "status.podIP"), LOCAL_IP);
        assert_eq!(field_ref(&pod, "metadata.labels['app']"), "x");
        assert_eq!(field_ref(&pod, "metadata.labels[\"a/b\"]"), "y");
        assert_eq!(field_ref(&pod, "metadata.annotations['note']"), "n");
        assert_eq!(field_ref(&pod, "metadata.labels"), "a/b=\"y\"\napp=\"x\"");
        assert_eq!(field_ref(&pod, "metadata.labels['missing']"), "");
        assert_eq!(field_ref(&pod, "status.phase"), "");
    }
}
