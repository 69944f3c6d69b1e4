//! Deterministic object names and label values (SPEC §3, §8).
//!
//! Names are the idempotency key: the instance of (workflow, parameter) always has the same
//! name, so a second trigger of a partition fails with AlreadyExists instead of running twice.

use sha2::{Digest, Sha256};

/// Longest instance name: a Job is named `<instance>-<execution>` and Job names end up in the
/// `job-name` pod label (63 characters), which leaves room for a 6-digit execution number.
pub const MAX_INSTANCE_NAME: usize = 56;
/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;
/// Hex characters of the hash appended to truncated names.
const HASH_LEN: usize = 10;

/// Lower-cases and maps every character outside `[a-z0-9-]` to `-`.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(HASH_LEN)
        .map(|nibble| char::from_digit(u32::from(nibble), 16).unwrap_or('0'))
        .collect()
}

/// Fits `name` within `max` characters: unchanged when it fits, otherwise truncated and
/// suffixed with a hash of `identity` so distinct identities keep distinct names.
fn fit(name: String, max: usize, identity: &str) -> String {
    if name.len() <= max {
        return name;
    }
    with_hash(&name, max, identity)
}

/// The ASCII `name` truncated so that `-<hash of identity>` fits within `max`, ending in an
/// alphanumeric character.
fn with_hash(name: &str, max: usize, identity: &str) -> String {
    let mut head: String = name.chars().take(max - HASH_LEN - 1).collect();
    while head.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        head.pop();
    }
    if head.is_empty() {
        return short_hash(identity);
    }
    format!("{head}-{}", short_hash(identity))
}

/// The name of the instance of `workflow` for `parameter`: `<workflow>-<parameter>` sanitised
/// (`hourly-report-2024-10-27t02-01-00`), truncated with a hash of the workflow and the full
/// parameter when longer than [`MAX_INSTANCE_NAME`]. The result is a valid DNS-1123 label.
pub fn instance_name(workflow: &str, parameter: &str) -> String {
    let base = sanitize(&format!("{workflow}-{parameter}"));
    let base = base.trim_matches('-').to_string();
    fit(base, MAX_INSTANCE_NAME, &format!("{workflow}\n{parameter}"))
}

/// The Job of an instance's `execution`-th attempt (1-based).
pub fn job_name(instance: &str, execution: u32) -> String {
    format!("{instance}-{execution}")
}

/// Whether `value` is a valid Kubernetes label value.
pub fn is_label_value(value: &str) -> bool {
    value.len() <= MAX_LABEL_VALUE
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

/// `value` as a label value: unchanged when valid, otherwise its allowed characters truncated
/// and suffixed with a hash of the original, so distinct values keep distinct labels.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    // Always hash: characters were replaced or dropped, so `a+b` and `a:b` must still differ.
    with_hash(trimmed, MAX_LABEL_VALUE, value)
}

/// Whether `name` is a DNS-1123 label: what Kubernetes requires of most names and of every
/// name that is also used as a label value.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_example_name() {
        assert_eq!(
            instance_name("hourly-report", "2024-10-27T02+01:00"),
            "hourly-report-2024-10-27t02-01-00"
        );
        assert_eq!(instance_name("hb", "2024-01-02T05"), "hb-2024-01-02t05");
        assert_eq!(job_name("hb-2024-01-02t05", 3), "hb-2024-01-02t05-3");
    }

    #[test]
    fn long_names_are_truncated_with_a_hash() {
        let workflow = "a-very-long-workflow-name-that-goes-on-and-on-for-quite-a-while";
        let a = instance_name(workflow, "2024-10-27T02:00:00+01:00");
        let b = instance_name(workflow, "2024-10-27T02:00:00+02:00");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.len() <= MAX_INSTANCE_NAME, "{name}");
            assert!(is_dns_label(name), "{name}");
        }
        assert!(is_dns_label(&job_name(&a, 999_999)));
    }

    #[test]
    fn label_values_are_valid_and_distinct() {
        assert_eq!(label_value("hourly-report"), "hourly-report");
        let long = "x".repeat(100);
        assert!(is_label_value(&label_value(&long)));
        assert_ne!(label_value("a+b"), label_value("a:b"));
        assert!(is_label_value(&label_value("a+b")));
        assert!(is_label_value(&label_value("-weird-")));
    }

    proptest! {
        #[test]
        fn instance_names_are_dns_labels(
            workflow in "[a-z0-9]([-a-z0-9.]{0,80}[a-z0-9])?",
            parameter in "[0-9T:+Z-]{1,40}",
        ) {
            let name = instance_name(&workflow, &parameter);
            prop_assert!(is_dns_label(&name), "{}", name);
            prop_assert!(name.len() <= MAX_INSTANCE_NAME);
            prop_assert_eq!(&name, &instance_name(&workflow, &parameter));
        }

        #[test]
        fn label_values_are_always_valid(value in ".{0,120}") {
            prop_assert!(is_label_value(&label_value(&value)));
        }
    }
}
