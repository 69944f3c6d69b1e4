//! Reaching the API server, and saying in one line why it could not be reached.

use super::*;

/// A backfill range problem in the words of `charon backfill create`'s flags rather than the
/// Backfill's fields.
pub(super) fn in_flags(error: &FieldError) -> String {
    let flag = match error.field.as_str() {
        "spec.start" => "--start",
        "spec.end" => "--end",
        other => other,
    };
    let reason = error
        .reason
        .replace("set spec.allowFuture", "pass --allow-future")
        .replace("spec.start", "--start");
    format!("{flag}: {reason}")
}

/// Builds the client from `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config` or the in-cluster
/// account, failing in one line that names the missing file and what to do. Returns the
/// client and the API server's URL.
pub(crate) async fn connect(target: &Target) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match &target.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                anyhow!(
                    "cannot read kubeconfig {}: {}; pass --kubeconfig a kubeconfig file",
                    path.display(),
                    one_line(&e)
                )
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| anyhow!("kubeconfig {}: {}", path.display(), one_line(&e)))?
        }
        None => {
            find_kubeconfig(target.context.is_some())?;
            let config = match &target.context {
                Some(_) => kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| one_line(&e)),
                None => kube::Config::infer().await.map_err(|e| one_line(&e)),
            };
            config.map_err(|e| anyhow!("loading the kubeconfig: {e}"))?
        }
    };
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = crate::operator::client_with_agent(config, crate::operator::CLI_AGENT)?;
    Ok((client, server))
}

/// Checks, before kube's inference does with a nested message, that some kubeconfig exists:
/// a file `$KUBECONFIG` names, else `~/.kube/config`, else (without `--context`) the
/// in-cluster account of a pod.
pub(super) fn find_kubeconfig(context: bool) -> anyhow::Result<()> {
    const WHAT_TO_DO: &str =
        "pass --kubeconfig PATH, set KUBECONFIG, or run `charon dev` for a local cluster";
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        if std::env::split_paths(&paths).any(|p| p.exists()) {
            return Ok(());
        }
        bail!(
            "no kubeconfig: KUBECONFIG is {}, which does not exist; {WHAT_TO_DO}",
            paths.to_string_lossy()
        );
    }
    let default = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"));
    if default.as_ref().is_some_and(|p| p.exists()) {
        return Ok(());
    }
    if !context && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        // In a pod: kube reads the service account.
        return Ok(());
    }
    let default = default.map_or_else(|| "~/.kube/config".to_string(), |p| p.display().to_string());
    bail!("no kubeconfig: KUBECONFIG is not set and {default} does not exist; {WHAT_TO_DO}")
}

/// An error and its causes on one line, each cause once.
pub(super) fn one_line(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Rewrites a failure to reach the API server as one line that names it and says what to
/// check; any other error is returned as it is.
pub(super) fn connection_error(error: anyhow::Error, server: &str) -> anyhow::Error {
    // Anywhere in the chain: some calls wrap the client's error in their own.
    let unreachable = error.chain().any(|e| {
        matches!(
            e.downcast_ref::<kube::Error>(),
            Some(kube::Error::HyperError(_) | kube::Error::Service(_))
        )
    });
    if !unreachable {
        return error;
    }
    // The innermost cause is the precise one ("Connection refused (os error 111)").
    let cause = error
        .chain()
        .last()
        .map(|e| e.to_string().replace('\n', " "))
        .unwrap_or_default();
    anyhow!(
        "cannot reach the API server at {server}: {cause}; check that the cluster is running and that the kubeconfig (or --kubeconfig, --context) points at it"
    )
}
