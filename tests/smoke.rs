//! Runs `scripts/smoke.sh` against the binary under test, so that the
//! smoke test is part of `cargo test` (and of CI).

#[test]
fn smoke_script_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/smoke.sh"))
        .env("KERNELS_BIN", env!("CARGO_BIN_EXE_kernels"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "smoke failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("smoke: OK"), "{stdout}");
}
