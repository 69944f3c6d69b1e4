//! Placeholder until the resource types land (being written now).

/// All CRDs as one YAML stream.
pub fn all_yaml() -> anyhow::Result<String> {
    anyhow::bail!("not yet")
}

/// One file per CRD.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    anyhow::bail!("not yet")
}
