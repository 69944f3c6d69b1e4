//! Which workflows depend on which (SPEC §15), learned from the workflows and instances the
//! controller reconciles, so that an upstream instance reaching `Done` wakes the downstream
//! instances waiting for it at once, with no list and no polling.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::lock;

/// `(namespace, workflow)`.
type Key = (String, String);

/// Downstream workflows by upstream workflow, per namespace.
#[derive(Debug, Default)]
pub struct Dependents(Mutex<Graph>);

#[derive(Debug, Default)]
struct Graph {
    /// What each downstream workflow depends on, as last learned.
    upstream: HashMap<Key, BTreeSet<String>>,
    /// The reverse: who depends on each upstream workflow.
    downstream: HashMap<Key, BTreeSet<String>>,
}

impl Dependents {
    /// Records that `workflow` in `namespace` depends on `upstream` (replacing what was
    /// known of it). Returns whether that changed anything.
    pub fn learn<'a>(
        &self,
        namespace: &str,
        workflow: &str,
        upstream: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        let upstream: BTreeSet<String> = upstream.into_iter().map(str::to_string).collect();
        let key = (namespace.to_string(), workflow.to_string());
        let mut graph = lock(&self.0);
        let known = graph.upstream.get(&key);
        if known == Some(&upstream) || (known.is_none() && upstream.is_empty()) {
            return false;
        }
        let before = graph.upstream.remove(&key).unwrap_or_default();
        for gone in before.difference(&upstream) {
            let up = (namespace.to_string(), gone.clone());
            if let Some(set) = graph.downstream.get_mut(&up) {
                set.remove(workflow);
                if set.is_empty() {
                    graph.downstream.remove(&up);
                }
            }
        }
        for name in &upstream {
            graph
                .downstream
                .entry((namespace.to_string(), name.clone()))
                .or_default()
                .insert(workflow.to_string());
        }
        if !upstream.is_empty() {
            graph.upstream.insert(key, upstream);
        }
        true
    }

    /// The workflows of `namespace` known to depend on `workflow`.
    pub fn of(&self, namespace: &str, workflow: &str) -> Vec<String> {
        lock(&self.0)
            .downstream
            .get(&(namespace.to_string(), workflow.to_string()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a deleted workflow's own dependencies.
    pub fn forget(&self, namespace: &str, workflow: &str) {
        self.learn(namespace, workflow, []);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_replaces_what_a_workflow_depends_on() {
        let d = Dependents::default();
        assert!(d.learn("ns", "report", ["ingest", "clean"]));
        assert!(!d.learn("ns", "report", ["clean", "ingest"]), "unchanged");
        assert!(!d.learn("ns", "plain", []), "nothing to learn");
        assert_eq!(d.of("ns", "ingest"), ["report"]);
        assert!(d.of("other", "ingest").is_empty(), "namespaces are apart");
        assert!(d.learn("ns", "summary", ["ingest"]));
        assert_eq!(d.of("ns", "ingest"), ["report", "summary"]);
        assert!(d.learn("ns", "report", ["clean"]));
        assert_eq!(d.of("ns", "ingest"), ["summary"]);
        assert_eq!(d.of("ns", "clean"), ["report"]);
        d.forget("ns", "report");
        assert!(d.of("ns", "clean").is_empty());
    }
}
