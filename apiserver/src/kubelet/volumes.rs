//! Volumes: secret, configMap, projected, downwardAPI and emptyDir volumes are written to
//! `<pod dir>/volumes/<volume>/`; hostPath volumes are the host path itself, and
//! persistentVolumeClaim volumes their bound PersistentVolume's path. Processes
//! cannot see the real mount paths, so the mounts are kept as (mountPath, directory) pairs
//! that the environment builder rewrites commands, args and env values with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::downward::field_ref;
use super::status::containers_of;
use crate::controllers::text;

/// (mountPath, host path) pairs, longest mountPath first.
pub type Mounts = Vec<(String, PathBuf)>;

/// A pod's volumes once materialised.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Volumes {
    /// (mountPath, host path) of each mount, longest mountPath first, per container name.
    pub mounts: Vec<(String, Mounts)>,
    /// Each volume's directory, by volume name.
    pub dirs: BTreeMap<String, PathBuf>,
}

impl Volumes {
    /// The mounts of the container `name` (none for an unknown one).
    pub fn mounts_of(&self, name: &str) -> Mounts {
        self.mounts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// `CHARON_DEV_VOLUME_<NAME>` for every volume (the name upper-cased, `-` and `.` as
    /// `_`): where a process finds a volume whose mount path it cannot use.
    pub fn env(&self) -> Vec<(String, String)> {
        self.dirs
            .iter()
            .map(|(name, dir)| {
                let key: String = name
                    .chars()
                    .map(|ch| match ch {
                        '-' | '.' => '_',
                        other => other.to_ascii_uppercase(),
                    })
                    .collect();
                (
                    format!("CHARON_DEV_VOLUME_{key}"),
                    dir.display().to_string(),
                )
            })
            .collect()
    }
}

/// Materialises the volumes of `pod` under `pod_dir`, which it creates. `lookup(plural,
/// name)` reads a Secret or ConfigMap of the pod's namespace. Err names the volume (empty
/// for the pod directory) and says why, as `MountVolume.SetUp` failures do.
pub fn prepare(
    pod: &Value,
    pod_dir: &Path,
    lookup: impl Fn(&str, &str) -> Option<Value>,
) -> Result<Volumes, (String, String)> {
    std::fs::create_dir_all(pod_dir).map_err(|e| (String::new(), e.to_string()))?;
    let volumes_dir = pod_dir.join("volumes");
    let mut hosts: HashMap<String, PathBuf> = HashMap::new();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = text(v, "/name").to_string();
        let fail = |m: String| (vname.clone(), m);
        if let Some(path) = v.pointer("/hostPath/path").and_then(Value::as_str) {
            hosts.insert(vname.clone(), PathBuf::from(path));
            continue;
        }
        if let Some(claim) = v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str)
        {
            let dir = claim_dir(claim, &lookup).map_err(&fail)?;
            std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
            hosts.insert(vname.clone(), dir);
            continue;
        }
        // The API server refuses such names; a pod that got past it still never writes
        // outside its directory.
        if !plain_name(&vname) {
            return Err(fail(format!(
                "volume name {vname:?} is not a single path element"
            )));
        }
        let dir = volumes_dir.join(&vname);
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let files = volume_files(pod, v, &lookup).map_err(&fail)?;
        write_files(&dir, files).map_err(|e| fail(e.to_string()))?;
        hosts.insert(vname, dir);
    }
    Ok(Volumes {
        mounts: container_mounts(pod, &hosts),
        dirs: hosts.into_iter().collect(),
    })
}

/// The directory of the volume bound to `claim`: a claim mounts its PersistentVolume's
/// path itself, so what one pod writes there the next one reads.
fn claim_dir(
    claim: &str,
    lookup: &impl Fn(&str, &str) -> Option<Value>,
) -> Result<PathBuf, String> {
    let found = lookup("persistentvolumeclaims", claim)
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
    let volume = text(&found, "/spec/volumeName");
    if volume.is_empty() {
        return Err(format!("persistentvolumeclaim \"{claim}\" is not bound"));
    }
    let pv = lookup("persistentvolumes", volume)
        .ok_or_else(|| format!("persistentvolume \"{volume}\" not found"))?;
    crate::storage::volume_path(&pv)
        .ok_or_else(|| format!("persistentvolume \"{volume}\" has no local path"))
}

/// The files of the volume `v` as (relative path, content); an emptyDir has none.
fn volume_files(
    pod: &Value,
    v: &Value,
    lookup: &impl Fn(&str, &str) -> Option<Value>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    let downward = |files: &mut Vec<(String, Vec<u8>)>, items: &[Value]| {
        for item in items {
            let value = field_ref(pod, text(item, "/fieldRef/fieldPath"));
            files.push((text(item, "/path").to_string(), value.into_bytes()));
        }
    };
    if let Some(s) = v.get("secret") {
        add_source(&mut files, "secret", s, lookup)?;
    } else if let Some(c) = v.get("configMap") {
        add_source(&mut files, "configMap", c, lookup)?;
    } else if let Some(sources) = v.pointer("/projected/sources").and_then(Value::as_array) {
        for s in sources {
            if let Some(secret) = s.get("secret") {
                let mut secret = secret.clone();
                secret["secretName"] = secret.get("name").cloned().unwrap_or(Value::Null);
                add_source(&mut files, "secret", &secret, lookup)?;
            } else if let Some(cm) = s.get("configMap") {
                add_source(&mut files, "configMap", cm, lookup)?;
            } else if let Some(items) = s.pointer("/downwardAPI/items").and_then(Value::as_array) {
                downward(&mut files, items);
            }
        }
    } else if let Some(items) = v.pointer("/downwardAPI/items").and_then(Value::as_array) {
        downward(&mut files, items);
    }
    Ok(files)
}

/// Adds the files of a `secret` or `configMap` volume source (its `items`, else every key).
fn add_source(
    files: &mut Vec<(String, Vec<u8>)>,
    kind: &str,
    source: &Value,
    lookup: &impl Fn(&str, &str) -> Option<Value>,
) -> Result<(), String> {
    let secret = kind == "secret";
    let (plural, name_field) = if secret {
        ("secrets", "/secretName")
    } else {
        ("configmaps", "/name")
    };
    let obj_name = text(source, name_field);
    let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
    let obj = match lookup(plural, obj_name) {
        Some(obj) => obj,
        None if optional => return Ok(()),
        None => {
            let what = if secret { "secret" } else { "configmap" };
            return Err(format!("{what} \"{obj_name}\" not found"));
        }
    };
    let data = object_data(&obj, secret);
    match source.get("items").and_then(Value::as_array) {
        Some(items) => {
            for item in items {
                let key = text(item, "/key");
                match data.get(key) {
                    Some(bytes) => files.push((text(item, "/path").to_string(), bytes.clone())),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configmap references non-existent config key: {key}"
                        ));
                    }
                }
            }
        }
        None => files.extend(data),
    }
    Ok(())
}

/// Whether `name` is one path element other than `.` and `..`, so joining it stays inside.
fn plain_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!((parts.next(), parts.next()), (Some(Component::Normal(n)), None) if n == name)
}

/// `path` when it stays inside the volume: relative, without `..`.
fn inside_volume(path: &str) -> Option<&Path> {
    let relative = Path::new(path);
    let escapes = relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, Component::ParentDir));
    (!escapes).then_some(relative)
}

/// Writes `files` under `dir`, skipping paths that would leave it.
fn write_files(dir: &Path, files: Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for (path, bytes) in files {
        let Some(relative) = inside_volume(&path) else {
            continue;
        };
        let file = dir.join(relative);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
    }
    Ok(())
}

/// Each container's mounts, given each volume's directory (`subPath` under it).
fn container_mounts(pod: &Value, hosts: &HashMap<String, PathBuf>) -> Vec<(String, Mounts)> {
    let mut mounts = Vec::new();
    for c in containers_of(pod, "initContainers")
        .iter()
        .chain(containers_of(pod, "containers").iter())
    {
        let mut list: Mounts = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let host = hosts.get(text(m, "/name"))?;
                // A subPath that would leave the volume (refused by the API server) mounts
                // nothing rather than another directory.
                let host = match text(m, "/subPath") {
                    "" => host.clone(),
                    sub => host.join(inside_volume(sub)?),
                };
                Some((
                    text(m, "/mountPath").trim_end_matches('/').to_string(),
                    host,
                ))
            })
            .filter(|(p, _)| !p.is_empty())
            .collect();
        list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        mounts.push((text(c, "/name").to_string(), list));
    }
    mounts
}

/// Replaces a mount path (or a path under it) in `s` by the directory that stands for it.
pub fn rewrite_mounts(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = s.to_string();
    for (mount, host) in mounts {
        let host = host.display().to_string();
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(mount.as_str()) {
            let before_ok = pos == 0
                || !rest[..pos]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
            let after = &rest[pos + mount.len()..];
            let after_ok = after
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')));
            result.push_str(&rest[..pos]);
            if before_ok && after_ok {
                result.push_str(&host);
            } else {
                result.push_str(mount);
            }
            rest = after;
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// The decoded `data` (and `stringData`, `binaryData`) of a Secret or ConfigMap.
pub fn object_data(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    let entries = |field: &str| {
        obj.get(field)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (k, v) in entries("data") {
        let s = v.as_str().unwrap_or_default();
        let bytes = if secret {
            b64.decode(s).unwrap_or_else(|_| s.as_bytes().to_vec())
        } else {
            s.as_bytes().to_vec()
        };
        out.insert(k, bytes);
    }
    for (k, v) in entries("binaryData") {
        if let Ok(bytes) = b64.decode(v.as_str().unwrap_or_default()) {
            out.insert(k, bytes);
        }
    }
    if secret {
        for (k, v) in entries("stringData") {
            out.insert(k, v.as_str().unwrap_or_default().as_bytes().to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mount_paths_are_rewritten_only_as_whole_paths() {
        let mounts = vec![(
            "/etc/creds".to_string(),
            PathBuf::from("/tmp/p/volumes/creds"),
        )];
        assert_eq!(
            rewrite_mounts("cat /etc/creds/password /etc/credsx", &mounts),
            "cat /tmp/p/volumes/creds/password /etc/credsx"
        );
    }

    #[test]
    fn volume_files_stay_inside_the_volume() {
        assert_eq!(inside_volume("a/b.txt"), Some(Path::new("a/b.txt")));
        assert_eq!(inside_volume("./a"), Some(Path::new("./a")));
        assert_eq!(inside_volume("/etc/passwd"), None);
        assert_eq!(inside_volume("../escape"), None);
        assert_eq!(inside_volume("a/../../escape"), None);
    }

    #[test]
    fn volume_names_and_sub_paths_never_leave_the_pod_directory() {
        assert!(plain_name("data"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc", "x/"] {
            assert!(!plain_name(bad), "{bad}");
        }
        let dir = std::env::temp_dir().join(format!("charon-escape-{}", std::process::id()));
        let pod = json!({"spec": {"volumes": [{"name": "../../escaped", "emptyDir": {}}]}});
        let err = prepare(&pod, &dir.join("pod"), |_, _| None).err();
        assert_eq!(err.map(|(v, _)| v), Some("../../escaped".to_string()));
        assert!(!dir.join("escaped").exists());
        let _ = std::fs::remove_dir_all(&dir);

        let hosts = HashMap::from([("data".to_string(), PathBuf::from("/pods/p/volumes/data"))]);
        let pod = json!({"spec": {"containers": [{"name": "main", "volumeMounts": [
            {"name": "data", "mountPath": "/a", "subPath": "../../other"},
            {"name": "data", "mountPath": "/b", "subPath": "/etc"},
            {"name": "data", "mountPath": "/c", "subPath": "fine/sub"},
        ]}]}});
        assert_eq!(
            container_mounts(&pod, &hosts),
            vec![(
                "main".to_string(),
                vec![(
                    "/c".to_string(),
                    PathBuf::from("/pods/p/volumes/data/fine/sub")
                )]
            )]
        );
    }

    #[test]
    fn mounts_are_per_container_longest_first() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "init", "volumeMounts": [{"name": "data", "mountPath": "/data/"}]}],
            "containers": [{"name": "main", "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/data/sub/deeper", "subPath": "sub"},
                {"name": "unknown", "mountPath": "/nowhere"},
                {"name": "data", "mountPath": "/"},
            ]}],
        }});
        let hosts = HashMap::from([("data".to_string(), PathBuf::from("/v/data"))]);
        assert_eq!(
            container_mounts(&pod, &hosts),
            vec![
                (
                    "init".to_string(),
                    vec![("/data".to_string(), PathBuf::from("/v/data"))]
                ),
                (
                    "main".to_string(),
                    vec![
                        ("/data/sub/deeper".to_string(), PathBuf::from("/v/data/sub")),
                        ("/data".to_string(), PathBuf::from("/v/data")),
                    ]
                ),
            ]
        );
    }

    #[test]
    fn volumes_are_written_from_their_sources() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("charon-volumes-{}", std::process::id()));
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [
                    {"name": "creds", "secret": {"secretName": "s", "items": [
                        {"key": "password", "path": "nested/pw"},
                        {"key": "password", "path": "../escape"},
                    ]}},
                    {"name": "conf", "configMap": {"name": "c"}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "host", "hostPath": {"path": "/srv"}},
                    {"name": "maybe", "configMap": {"name": "absent", "optional": true}},
                ],
                "containers": [{"name": "main"}],
            },
        });
        let lookup = |plural: &str, name: &str| match (plural, name) {
            ("secrets", "s") => Some(json!({"data": {"password": "czNjcmV0"}})),
            ("configmaps", "c") => Some(json!({"data": {"mode": "fast"}})),
            _ => None,
        };
        let volumes = prepare(&pod, &dir, lookup)
            .map_err(|(v, m)| std::io::Error::other(format!("{v}: {m}")))?;
        let read = |path: &str| std::fs::read_to_string(dir.join("volumes").join(path));
        assert_eq!(read("creds/nested/pw")?, "s3cret");
        assert!(!dir.join("volumes/escape").exists());
        assert_eq!(read("conf/mode")?, "fast");
        assert_eq!(read("info/name")?, "p");
        assert!(dir.join("volumes/scratch").is_dir());
        assert_eq!(volumes.dirs["host"], PathBuf::from("/srv"));
        assert_eq!(
            volumes.env().first(),
            Some(&(
                "CHARON_DEV_VOLUME_CONF".to_string(),
                dir.join("volumes/conf").display().to_string()
            ))
        );

        // A missing source fails the volume it belongs to, in the kubelet's words.
        let missing =
            json!({"spec": {"volumes": [{"name": "gone", "secret": {"secretName": "nope"}}]}});
        assert_eq!(
            prepare(&missing, &dir, lookup),
            Err(("gone".to_string(), "secret \"nope\" not found".to_string()))
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn secret_data_is_decoded() {
        let secret = json!({"data": {"a": "aGk="}, "stringData": {"b": "plain"}, "binaryData": {"c": "AAE="}});
        let data = object_data(&secret, true);
        assert_eq!(data["a"], b"hi");
        assert_eq!(data["b"], b"plain");
        assert_eq!(data["c"], [0u8, 1]);
        // ConfigMap data is text as it is; stringData is a Secret's only.
        let map = object_data(
            &json!({"data": {"a": "aGk="}, "stringData": {"b": "x"}}),
            false,
        );
        assert_eq!(map["a"], b"aGk=");
        assert!(!map.contains_key("b"));
    }
}
