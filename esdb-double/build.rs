//! Compiles the protocol definitions the `kurrentdb` client crate ships (from
//! its package directory in Cargo's registry; they are not copied here) into
//! server stubs, with protox (no `protoc` needed).

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"kurrentdb\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("kurrentdb is in Cargo.lock");
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let protos = std::fs::read_dir(cargo_home.join("registry/src"))
        .expect("Cargo's registry sources")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("kurrentdb-{version}/protos")))
        .find(|p| p.join("streams.proto").exists())
        .unwrap_or_else(|| {
            panic!(
                "kurrentdb-{version}'s protos not found under {}",
                cargo_home.display()
            )
        });
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let files = protox::compile(["streams.proto", "serverfeatures.proto"], [&protos])
        .expect("the protocol definitions compile");
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(files)
        .expect("server stubs");
}
