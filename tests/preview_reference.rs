//! `charon preview` agrees with an independent implementation of SPEC §2 written in Python
//! from the text of the contract (`tests/reference/schedule_reference.py`), on seeded random
//! schedules, zones, offsets and start times, many of them just before daylight-saving shifts,
//! plus a fixed grid around one forward and one backward shift per zone.
//!
//! Run by hand: `python3 tests/reference/compare.py target/debug/charon`.

use std::process::Command;

#[test]
fn preview_agrees_with_the_reference_implementation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(root.join("tests/reference/compare.py"))
        .arg(env!("CARGO_BIN_EXE_charon"))
        .current_dir(root)
        .output()
        .expect("python3 (3.11 or newer, standard library only) is on PATH");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "charon preview disagrees with tests/reference/schedule_reference.py:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" passed, 0 failed") && !last.starts_with("0 passed"),
        "unexpected summary from compare.py: {last:?}\n{stdout}\n{stderr}"
    );
}
