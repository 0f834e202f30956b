//! Build script: records the commit the binary is built from (`RINGCAST_COMMIT`, shown by
//! `--version` and in `ringcast_build_info`), `unknown` outside a git checkout.

fn main() {
    // A build without the git history (a container build from a tarball) may pass it in.
    let given = std::env::var("RINGCAST_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let commit = given
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RINGCAST_COMMIT={commit}");
    // Rebuilt when the checked-out commit moves (HEAD, or the branch it points to).
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=RINGCAST_COMMIT");
}
