//! A container's process as the kubelet would configure it: its environment (the service
//! variables, `envFrom`, `env` with `$(VAR)` expansion, fieldRef, secret and configMap
//! refs), its argv and its working directory, with mount paths rewritten to the volumes'
//! directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::downward::field_ref;
use super::status::LOCAL_IP;
use super::volumes::{Volumes, object_data, rewrite_mounts};
use crate::controllers::text;

/// The process to start for a container.
#[derive(Debug, PartialEq)]
pub struct Resolved {
    /// Command and args; None without a command (there are no image entrypoints to run).
    pub argv: Option<Vec<String>>,
    /// The whole environment: nothing else of the kubelet's own is passed on.
    pub env: Vec<(String, String)>,
    /// Where it starts.
    pub cwd: PathBuf,
}

/// What of its pod a container's process is configured from.
pub struct Sandbox<'a> {
    /// The pod as stored.
    pub pod: &'a Value,
    /// Its namespace, where env sources are read from.
    pub namespace: &'a str,
    /// Its name, the default hostname.
    pub name: &'a str,
    /// The pod's directory: `HOME`, and the working directory by default.
    pub dir: &'a Path,
    /// Where the API server listens (`host:port`), for `KUBERNETES_SERVICE_PORT`.
    pub address: &'a str,
    /// Its volumes, as prepared.
    pub volumes: &'a Volumes,
}

/// Sets `k` in `vars`, the last setting winning.
fn set(vars: &mut Vec<(String, String)>, k: String, v: String) {
    vars.retain(|(x, _)| *x != k);
    vars.push((k, v));
}

/// The variables a pod spec gives container `c`, in order: the service variables, then
/// `envFrom`, then `env`. `lookup(plural, name)` reads a Secret or ConfigMap of the pod's
/// namespace. Err says why the container cannot be configured (`CreateContainerConfigError`).
pub fn container_vars(
    sandbox: &Sandbox<'_>,
    c: &Value,
    lookup: impl Fn(&str, &str) -> Option<Value>,
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let port = sandbox
        .address
        .rsplit(':')
        .next()
        .unwrap_or("443")
        .to_string();
    for (k, v) in [
        ("KUBERNETES_SERVICE_HOST", LOCAL_IP.to_string()),
        ("KUBERNETES_SERVICE_PORT", port.clone()),
        ("KUBERNETES_PORT", format!("tcp://{LOCAL_IP}:{port}")),
    ] {
        set(&mut vars, k.to_string(), v);
    }
    for from in c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = text(from, "/prefix");
        let (source, secret) = match (from.get("secretRef"), from.get("configMapRef")) {
            (Some(s), _) => (s, true),
            (None, Some(cm)) => (cm, false),
            _ => continue,
        };
        let name = text(source, "/name");
        let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
        match lookup(if secret { "secrets" } else { "configmaps" }, name) {
            Some(obj) => {
                for (k, v) in object_data(&obj, secret) {
                    set(
                        &mut vars,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "{} \"{name}\" not found",
                    if secret { "secret" } else { "configmap" }
                ));
            }
        }
    }
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let key = text(e, "/name").to_string();
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            let known: HashMap<&str, &str> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(v, |n| known.get(n).map(|s| s.to_string()))
        } else if let Some(from) = e.get("valueFrom") {
            if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                field_ref(sandbox.pod, path)
            } else if let Some(sel) = from
                .get("secretKeyRef")
                .or_else(|| from.get("configMapKeyRef"))
            {
                let secret = from.get("secretKeyRef").is_some();
                let name = text(sel, "/name");
                let k = text(sel, "/key");
                let optional = sel.get("optional").and_then(Value::as_bool) == Some(true);
                let what = if secret { "secret" } else { "configmap" };
                match lookup(if secret { "secrets" } else { "configmaps" }, name) {
                    Some(obj) => match object_data(&obj, secret).remove(k) {
                        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {k} in {}{} {}/{name}",
                                what[..1].to_uppercase(),
                                &what[1..],
                                sandbox.namespace
                            ));
                        }
                    },
                    None if optional => continue,
                    None => return Err(format!("{what} \"{name}\" not found")),
                }
            } else if let Some(r) = from.get("resourceFieldRef") {
                match text(r, "/resource") {
                    "limits.cpu" | "requests.cpu" => "1".to_string(),
                    _ => "0".to_string(),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut vars, key, value);
    }
    Ok(vars)
}

/// The process to start for container `c`: argv (None without a command), environment and
/// working directory, or why it cannot be configured. The environment is a few of the
/// kubelet's own (`PATH`, `LANG`, `LC_ALL`, `TZ`), `HOME`, `HOSTNAME`, `TMPDIR`, the
/// volumes' variables, then the container's.
pub fn resolve(
    sandbox: &Sandbox<'_>,
    c: &Value,
    lookup: impl Fn(&str, &str) -> Option<Value>,
) -> Result<Resolved, String> {
    let vars = container_vars(sandbox, c, lookup)?;
    let hostname = match text(sandbox.pod, "/spec/hostname") {
        "" => sandbox.name.to_string(),
        h => h.to_string(),
    };
    let mounts = sandbox.volumes.mounts_of(text(c, "/name"));
    let rewrite = |s: String| rewrite_mounts(&s, &mounts);
    let known: HashMap<String, String> = vars.iter().cloned().collect();
    let lookup = |n: &str| known.get(n).cloned();
    let list = |field: &str| -> Option<Vec<String>> {
        c.get(field).and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|x| rewrite(expand(x.as_str().unwrap_or_default(), lookup)))
                .collect()
        })
    };
    let argv = match (list("command"), list("args")) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let mut argv = cmd;
            argv.extend(args.unwrap_or_default());
            Some(argv)
        }
        _ => None,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for k in ["PATH", "LANG", "LC_ALL", "TZ"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env.push(("HOME".into(), sandbox.dir.display().to_string()));
    env.push(("HOSTNAME".into(), hostname));
    env.push(("TMPDIR".into(), std::env::temp_dir().display().to_string()));
    env.extend(sandbox.volumes.env());
    for (k, v) in vars {
        env.retain(|(x, _)| *x != k);
        env.push((k, rewrite(v)));
    }
    let cwd = match text(c, "/workingDir") {
        "" => sandbox.dir.to_path_buf(),
        w => {
            let rewritten = PathBuf::from(rewrite(w.to_string()));
            if rewritten.is_dir() {
                rewritten
            } else {
                sandbox.dir.to_path_buf()
            }
        }
    };
    Ok(Resolved { argv, env, cwd })
}

/// Kubelet's `$(VAR)` expansion: `$$` is a literal `$`, unknown references stay as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.extend_from_slice(&bytes[checkpoint..cursor]);
            let rest = &bytes[cursor + 1..];
            let advance = match rest[0] {
                b'$' => {
                    out.push(b'$');
                    1
                }
                b'(' => match rest.iter().skip(1).position(|b| *b == b')') {
                    Some(p) => {
                        let name = String::from_utf8_lossy(&rest[1..p + 1]).into_owned();
                        match lookup(&name) {
                            Some(v) => out.extend_from_slice(v.as_bytes()),
                            None => out.extend_from_slice(format!("$({name})").as_bytes()),
                        }
                        p + 2
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                other => {
                    out.push(b'$');
                    out.push(other);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < bytes.len() {
        out.extend_from_slice(&bytes[checkpoint..]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)", vars), "x-$(B)");
        assert_eq!(expand("$$(A) $$ $", vars), "$(A) $ $");
        assert_eq!(expand("$((n+1)) $(A", vars), "$((n+1)) $(A");
        assert_eq!(expand("héllo $(A)é", vars), "héllo xé");
    }

    fn lookup(plural: &str, name: &str) -> Option<Value> {
        match (plural, name) {
            ("secrets", "s") => Some(json!({"data": {"password": "czNjcmV0"}})),
            ("configmaps", "c") => Some(json!({"data": {"MODE": "fast", "LEVEL": "3"}})),
            _ => None,
        }
    }

    fn sandbox<'a>(pod: &'a Value, volumes: &'a Volumes) -> Sandbox<'a> {
        Sandbox {
            pod,
            namespace: "ns",
            name: "p",
            dir: Path::new("/work/ns_p_u"),
            address: "127.0.0.1:6443",
            volumes,
        }
    }

    #[test]
    fn variables_come_in_the_kubelets_order() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}});
        let volumes = Volumes::default();
        let c = json!({
            "name": "main",
            "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"},
                {"secretRef": {"name": "absent", "optional": true}}],
            "env": [
                {"name": "GREETING", "value": "hello"},
                {"name": "MESSAGE", "value": "$(GREETING) $(CM_MODE) $(NOPE)"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "SKIPPED", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "x", "optional": true}}},
                {"name": "GREETING", "value": "again"},
            ],
        });
        let vars = container_vars(&sandbox(&pod, &volumes), &c, lookup);
        let want: Vec<(String, String)> = [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
            ("KUBERNETES_PORT", "tcp://127.0.0.1:6443"),
            ("CM_LEVEL", "3"),
            ("CM_MODE", "fast"),
            ("MESSAGE", "hello fast $(NOPE)"),
            ("PW", "s3cret"),
            ("POD", "p"),
            ("CPU", "1"),
            ("GREETING", "again"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, Ok(want));
    }

    #[test]
    fn missing_sources_say_what_is_missing() {
        let pod = json!({});
        let volumes = Volumes::default();
        let with =
            |env: Value| container_vars(&sandbox(&pod, &volumes), &json!({"env": [env]}), lookup);
        assert_eq!(
            with(json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}})),
            Err("couldn't find key nope in Secret ns/s".to_string())
        );
        assert_eq!(
            with(
                json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}})
            ),
            Err("configmap \"gone\" not found".to_string())
        );
        let from = json!({"envFrom": [{"secretRef": {"name": "gone"}}]});
        assert_eq!(
            container_vars(&sandbox(&pod, &volumes), &from, lookup),
            Err("secret \"gone\" not found".to_string())
        );
    }

    #[test]
    fn processes_see_volume_directories_for_mount_paths() {
        let pod = json!({"spec": {"hostname": "host-0"}});
        let volumes = Volumes {
            mounts: vec![(
                "main".to_string(),
                vec![("/etc/app".to_string(), PathBuf::from("/v/conf"))],
            )],
            dirs: [("app-conf".to_string(), PathBuf::from("/v/conf"))]
                .into_iter()
                .collect(),
        };
        let c = json!({
            "name": "main",
            "command": ["cat", "/etc/app/$(FILE)"],
            "args": ["--dir=/etc/app"],
            "env": [{"name": "FILE", "value": "settings"}, {"name": "CONF", "value": "/etc/app/x"}],
            "workingDir": "/etc/app",
        });
        let resolved = resolve(&sandbox(&pod, &volumes), &c, lookup)
            .unwrap_or_else(|e| panic!("resolves: {e}"));
        assert_eq!(
            resolved.argv,
            Some(vec![
                "cat".to_string(),
                "/v/conf/settings".to_string(),
                "--dir=/v/conf".to_string(),
            ])
        );
        let env: HashMap<String, String> = resolved.env.into_iter().collect();
        assert_eq!(env["HOME"], "/work/ns_p_u");
        assert_eq!(env["HOSTNAME"], "host-0");
        assert_eq!(env["CONF"], "/v/conf/x");
        assert_eq!(env["CHARON_DEV_VOLUME_APP_CONF"], "/v/conf");
        // A working directory that does not exist falls back to the pod's.
        assert_eq!(resolved.cwd, PathBuf::from("/work/ns_p_u"));
        // Without a command there is nothing to run.
        let bare = resolve(
            &sandbox(&pod, &volumes),
            &json!({"name": "main", "args": ["x"]}),
            lookup,
        );
        assert_eq!(bare.map(|r| r.argv), Ok(None));
    }
}
