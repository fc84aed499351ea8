//! Leaves the C side beside the library the build makes, so that a C app
//! builds against an uninstalled tree:
//!
//!     PKG_CONFIG_PATH=target/release/pkgconfig cc app.c $(pkg-config --cflags --libs driverkit-iokit)
//!     LD_LIBRARY_PATH=target/release ./app
//!
//! `target/PROFILE/include/` gets the headers and
//! `target/PROFILE/pkgconfig/driverkit-iokit.pc` points at both.
//! (`make -C crates/driverkit-iokit install` installs them for good.)

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=driverkit-iokit.pc.in");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/PROFILE/build/driverkit-iokit-HASH/out.
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    let include = profile_dir.join("include");
    copy_tree(Path::new("include"), &include);
    let template = std::fs::read_to_string("driverkit-iokit.pc.in").expect("the .pc template");
    let pc = template
        .replace("@prefix@", &profile_dir.display().to_string())
        .replace("@libdir@", "${prefix}")
        .replace("@version@", env!("CARGO_PKG_VERSION"));
    let pkgconfig = profile_dir.join("pkgconfig");
    let _ = std::fs::create_dir_all(&pkgconfig);
    let _ = std::fs::write(pkgconfig.join("driverkit-iokit.pc"), pc);
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries.flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            let _ = std::fs::copy(e.path(), target);
        }
    }
}
