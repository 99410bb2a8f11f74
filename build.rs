//! Compiles `proto/` into Rust with no `protoc` on the machine: `protox` parses
//! the files into a descriptor set, `tonic-prost-build` generates the code, and
//! the descriptor set is kept in `OUT_DIR` for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/palr/v1/recommender.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("palr_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Malformed requests are INVALID_ARGUMENT, not prost's INTERNAL (src/proto_codec.rs).
        .codec_path("crate::proto_codec::PalrCodec")
        .compile_fds(fds)?;
    Ok(())
}
