//! `charon preview` agrees with an independent, brute-force implementation of SPEC §2
//! (`tests/reference/schedule_reference.py`) on seeded random schedules, zones, offsets and
//! start times near daylight-saving transitions.

use std::process::Command;

#[test]
fn preview_agrees_with_the_reference_implementation() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    let output = Command::new("python3")
        .arg("compare.py")
        .arg(env!("CARGO_BIN_EXE_charon"))
        .arg("150")
        .current_dir(&dir)
        .output()
        .expect("python3 runs (CI installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "charon preview disagrees with the reference:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("150 passed, 0 failed"), "{stdout}");
}
