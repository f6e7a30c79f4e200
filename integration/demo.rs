//! The README's first command: `rlsgate demo` starts, both tenants see their rows
//! through psql, and everything is cleaned up.

#[test]
fn demo_smoke_runs_end_to_end() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlsgate"))
        .args(["demo", "--port", "0", "--smoke"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rlsgate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("smoke: alice sees acme|3"), "{stdout}");
    assert!(stdout.contains("smoke: bob sees globex|2"), "{stdout}");
    assert!(
        stdout.contains("sslmode=require"),
        "psql lines are printed: {stdout}"
    );
}
