//! Records the git commit the trainer was built from (for `code_version` in artifacts).

fn main() {
    // HEAD names the branch; the branch's ref file changes with every commit.
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=RETRYWISE_GIT_COMMIT={}", commit.trim());
}
