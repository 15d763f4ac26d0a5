//! A loom build (`RUSTFLAGS="--cfg loom"`) reaches rustc but not rustdoc,
//! which would then collect the doc tests of the whole crate and fail to
//! build them without the dependencies a loom build leaves out. Passing the
//! cfg on makes rustdoc see the same crate as rustc (and `lib.rs` then has
//! no doc tests for it: loom's types only work inside a loom model).
fn main() {
    println!("cargo:rustc-check-cfg=cfg(loom)");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let loom =
        flags.windows(2).any(|pair| pair == ["--cfg", "loom"]) || flags.contains(&"--cfg=loom");
    if loom {
        println!("cargo:rustc-cfg=loom");
    }
}
