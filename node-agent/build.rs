//! Compiles the BPF programs of `bpf/` into `OUT_DIR`, where `datapath::loader` embeds
//! them. Every `.c` file of `bpf/` except `layout_probe.c` (a host program for the layout
//! test) is one object, named after the file.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &str = "clang libbpf-dev linux-libc-dev";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let bpf = manifest.join("../bpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", bpf.display());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    let multiarch = multiarch_include();
    for header in ["bpf/bpf_helpers.h", "linux/bpf.h"] {
        let found = [Path::new("/usr/include"), multiarch.as_path()]
            .iter()
            .any(|dir| dir.join(header).exists());
        if !found {
            panic!(
                "building the BPF datapath needs <{header}>, which is not installed: \
                 install the Debian packages {PACKAGES} (apt-get install {PACKAGES})"
            );
        }
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf)
        .unwrap_or_else(|e| panic!("reading {}: {e}", bpf.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .filter(|p| p.file_name().is_some_and(|n| n != "layout_probe.c"))
        .collect();
    sources.sort();
    for source in sources {
        let stem = source.file_stem().expect("a .c file has a stem");
        let object = out.join(stem).with_extension("o");
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"])
            .arg("-I")
            .arg(&bpf)
            .arg("-I")
            .arg(&multiarch)
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running `{clang}` to build {}: {e}. Install the Debian packages \
                     {PACKAGES} (apt-get install {PACKAGES}), or point BPF_CLANG at a clang",
                    source.display()
                )
            });
        if !status.success() {
            panic!("`{clang}` failed to build {}", source.display());
        }
    }
}

/// Debian keeps `asm/types.h` under /usr/include/<multiarch>, which `-target bpf` does not
/// search by itself.
fn multiarch_include() -> PathBuf {
    let triple = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    Path::new("/usr/include").join(triple)
}
