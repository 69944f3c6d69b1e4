//! What a real kube-apiserver (with kubectl 1.27–1.33) answers to one kubectl session, step
//! by step, taken from the Kubernetes API conventions and documentation and from the
//! messages of the real server's validation code. `kubectl_session_matches_the_real_server`
//! replays the session against the embedded server and compares each answer, so a change
//! that makes the embedded server answer differently fails.

/// One kubectl step and the real server's answer.
pub struct Step {
    /// kubectl arguments (no kubeconfig).
    pub args: &'static [&'static str],
    /// Standard input, for `-f -`.
    pub stdin: Option<&'static str>,
    /// Whether kubectl succeeds.
    pub succeeds: bool,
    /// What kubectl prints: stdout on success, stderr on failure (trimmed).
    pub output: Answer,
}

/// How much of the output is recorded.
pub enum Answer {
    /// All of it.
    Exactly(&'static str),
    /// Its first line or lines (kubectl's own advice follows).
    StartsWith(&'static str),
}

/// The session, in order.
pub const SESSION: &[Step] = &[
    Step {
        args: &["get", "configmap", "missing"],
        stdin: None,
        succeeds: false,
        output: Answer::Exactly(r#"Error from server (NotFound): configmaps "missing" not found"#),
    },
    Step {
        args: &[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ],
        stdin: None,
        succeeds: true,
        output: Answer::Exactly("configmap/settings created"),
    },
    Step {
        args: &[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ],
        stdin: None,
        succeeds: false,
        output: Answer::Exactly(
            r#"error: failed to create configmap: configmaps "settings" already exists"#,
        ),
    },
    // A create makes its field manager the owner of what it set.
    Step {
        args: &[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.metadata.managedFields[0].manager}:{.metadata.managedFields[0].operation}:{.metadata.managedFields[0].fieldsType}",
        ],
        stdin: None,
        succeeds: true,
        output: Answer::Exactly("kubectl-create:Update:FieldsV1"),
    },
    Step {
        args: &[
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"mode":"slow"}}"#,
        ],
        stdin: None,
        succeeds: true,
        output: Answer::Exactly("configmap/settings patched"),
    },
    // The patch took .data.mode: applying another value conflicts.
    Step {
        args: &["apply", "--server-side", "-f", "-"],
        stdin: Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n",
        ),
        succeeds: false,
        output: Answer::StartsWith(
            r#"error: Apply failed with 1 conflict: conflict with "kubectl-patch": .data.mode"#,
        ),
    },
    Step {
        args: &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        stdin: Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n",
        ),
        succeeds: true,
        output: Answer::Exactly("configmap/settings serverside-applied"),
    },
    Step {
        // (`kubectl label` checks values itself; a patch reaches the server.)
        args: &[
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"team":"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"}}}"#,
        ],
        stdin: None,
        succeeds: false,
        output: Answer::Exactly(concat!(
            r#"The ConfigMap "settings" is invalid: metadata.labels: Invalid value: ""#,
            "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
            r#"": must be no more than 63 characters"#
        )),
    },
    Step {
        args: &["create", "-f", "-"],
        stdin: Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: Team_B}\n"),
        succeeds: false,
        output: Answer::Exactly(
            r#"The Namespace "Team_B" is invalid: metadata.name: Invalid value: "Team_B": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
        ),
    },
    Step {
        args: &["get", "nosuchkind"],
        stdin: None,
        succeeds: false,
        output: Answer::Exactly(r#"error: the server doesn't have a resource type "nosuchkind""#),
    },
    Step {
        args: &["get", "pods"],
        stdin: None,
        succeeds: true,
        output: Answer::Exactly(""),
    },
    Step {
        args: &[
            "get",
            "configmaps",
            "--sort-by=.metadata.name",
            "-o",
            "custom-columns=NAME:.metadata.name,MODE:.data.mode",
        ],
        stdin: None,
        succeeds: true,
        output: Answer::Exactly("NAME       MODE\nsettings   fast"),
    },
    Step {
        args: &["delete", "configmap", "settings"],
        stdin: None,
        succeeds: true,
        output: Answer::Exactly(r#"configmap "settings" deleted"#),
    },
    Step {
        args: &["delete", "configmap", "settings"],
        stdin: None,
        succeeds: false,
        output: Answer::Exactly(r#"Error from server (NotFound): configmaps "settings" not found"#),
    },
];
