#!/bin/bash
# Regenerates runtime.v1.rs (the CRI v1 messages and the RuntimeService / ImageService clients)
# from api.proto, the Kubernetes CRI API (k8s.io/cri-api pkg/apis/runtime/v1/api.proto, Apache-2.0).
# Checked in so building reef needs no protoc and no build script. Needs protoc (Debian
# protobuf-compiler) and cargo; builds a throwaway generator with tonic-prost-build 0.14 (the
# version of tonic/prost in integration/Cargo.toml) in a temporary directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v protoc >/dev/null || { echo "regenerate.sh: needs protoc (apt-get install protobuf-compiler)" >&2; exit 1; }
gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
mkdir -p "$gen/src" "$gen/out"
cat > "$gen/Cargo.toml" <<'TOML'
[package]
name = "crigen"
version = "0.0.0"
edition = "2021"
[workspace]
[dependencies]
tonic-prost-build = "0.14"
TOML
cat > "$gen/src/main.rs" <<'RS'
fn main() {
    let mut a = std::env::args().skip(1);
    let (out, proto) = (a.next().unwrap(), std::path::PathBuf::from(a.next().unwrap()));
    let dir = proto.parent().unwrap().to_path_buf();
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(out)
        .compile_protos(&[proto], &[dir])
        .unwrap();
}
RS
cargo run -q --manifest-path "$gen/Cargo.toml" -- "$gen/out" "$here/api.proto"
cp "$gen/out/runtime.v1.rs" "$here/runtime.v1.rs"
echo "regenerated $here/runtime.v1.rs"
