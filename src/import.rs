//! `charon import styx FILE|DIR`: Workflow manifests for Styx workflow files (SPEC §15).
//!
//! The conversion is [`charon_core::styx`]; this reads the files, prints the manifests on
//! stdout for `kubectl apply -f -`, and reports on stderr what has no equivalent and which
//! files could not be imported.

use std::io::Write;
use std::path::{Path, PathBuf};

use charon_core::names;
use charon_core::styx;

/// Arguments of `charon import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The format of the files to import.
    #[command(subcommand)]
    pub format: ImportFormat,
}

/// The formats `charon import` reads.
#[derive(Debug, clap::Subcommand)]
pub enum ImportFormat {
    /// Print Workflow manifests for Styx workflow files, for `kubectl apply -f -`. What has
    /// no equivalent in Charon is reported on stderr, one line per field.
    Styx(StyxArgs),
}

/// Arguments of `charon import styx`.
#[derive(Debug, clap::Args)]
pub struct StyxArgs {
    /// Styx workflow files, or directories whose *.yaml and *.yml files are all imported, in
    /// name order.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Namespace written into every manifest. Default: none, so `kubectl apply` uses the
    /// namespace of its context.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Runs `charon import`, printing manifests to `out` and notes and errors to `err`. Fails
/// when any file could not be imported, after printing the others.
pub fn run(args: &ImportArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    match &args.format {
        ImportFormat::Styx(args) => import_styx(args, out, err),
    }
}

fn import_styx(args: &StyxArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(namespace) = &args.namespace
        && !names::is_dns_label(namespace)
    {
        anyhow::bail!(
            "--namespace: {namespace:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
        );
    }
    let mut failed = 0usize;
    let mut total = 0usize;
    let mut files: Vec<(String, String)> = Vec::new();
    for path in &args.paths {
        match inputs(path) {
            Ok(paths) => {
                for file in paths {
                    total += 1;
                    let name = file.display().to_string();
                    match read(&file) {
                        Ok(text) => files.push((name, text)),
                        Err(reason) => {
                            failed += 1;
                            writeln!(err, "error: {name}: {reason}")?;
                        }
                    }
                }
            }
            Err(reason) => {
                total += 1;
                failed += 1;
                writeln!(err, "error: {}: {reason}", path.display())?;
            }
        }
    }
    let results = styx::import_files(
        files
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_str())),
        args.namespace.as_deref(),
    );
    let mut printed = 0usize;
    for ((name, _), result) in files.iter().zip(results) {
        match result {
            Ok(import) => {
                for note in &import.notes {
                    writeln!(err, "warning: {note}")?;
                }
                for workflow in &import.workflows {
                    if printed > 0 {
                        writeln!(out, "---")?;
                    }
                    writeln!(out, "# Styx workflow file {name}")?;
                    out.write_all(serde_yaml::to_string(workflow)?.as_bytes())?;
                    printed += 1;
                }
            }
            Err(errors) => {
                failed += 1;
                for error in errors {
                    writeln!(err, "error: {error}")?;
                }
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        let others = match printed {
            0 => "no Workflow printed".to_string(),
            1 => "printed the 1 Workflow of the others".to_string(),
            n => format!("printed the {n} Workflows of the others"),
        };
        anyhow::bail!("{failed} of {total} Styx files could not be imported (see above); {others}");
    }
    Ok(())
}

/// The files `path` names: itself, or for a directory its `*.yaml` and `*.yml` files (not
/// those of subdirectories), sorted by name as Styx read them. The error is the reason only.
fn inputs(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot list: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list: {e}"))?;
        let file = entry.path();
        let yaml = file
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if yaml && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err("no *.yaml or *.yml file in this directory".to_string());
    }
    files.sort();
    Ok(files)
}

fn read(file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text, so not a Styx workflow file".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_in(dir: &Path, namespace: Option<&str>) -> (bool, String, String) {
        let args = ImportArgs {
            format: ImportFormat::Styx(StyxArgs {
                paths: vec![dir.to_path_buf()],
                namespace: namespace.map(str::to_string),
            }),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = run(&args, &mut out, &mut err);
        if let Err(e) = &result {
            writeln!(err, "error: {e:#}").expect("write");
        }
        (
            result.is_ok(),
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn a_styx_directory_is_imported_in_name_order_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        write("b.yml", "id: b\nschedule: daily\ndocker_image: busybox\n").expect("b");
        write("a.yaml", "id: a\nschedule: hourly\ndocker_image: busybox\n").expect("a");
        write("notes.txt", "not a workflow").expect("txt");
        let (ok, out, err) = run_in(dir.path(), Some("data"));
        assert!(ok, "{err}");
        assert!(err.is_empty(), "{err}");
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("  name: "))
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(out.matches("\n---\n").count(), 1, "{out}");
        assert_eq!(out.matches("namespace: data").count(), 2, "{out}");

        write(
            "c.yaml",
            "id: c\nschedule: '@fortnightly'\ndocker_image: busybox\n",
        )
        .expect("c");
        let (ok, out, err) = run_in(dir.path(), None);
        assert!(!ok);
        let c = dir.path().join("c.yaml");
        assert!(
            err.contains(&format!(
                "error: {}: workflow \"c\": schedule: unknown schedule \"@fortnightly\"",
                c.display()
            )),
            "{err}"
        );
        assert!(
            err.contains(
                "error: 1 of 3 Styx files could not be imported (see above); printed the 2 Workflows of the others"
            ),
            "{err}"
        );
        assert_eq!(out.matches("kind: Workflow").count(), 2, "{out}");

        let (ok, _, err) = run_in(dir.path(), Some("Data"));
        assert!(!ok);
        assert!(err.contains("--namespace: \"Data\""), "{err}");
        let empty = tempfile::tempdir().expect("dir");
        let (ok, _, err) = run_in(empty.path(), None);
        assert!(!ok);
        assert!(err.contains("no *.yaml or *.yml file"), "{err}");
    }
}
