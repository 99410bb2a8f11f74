//! Compiles `proto/` into Rust with no `protoc` on the machine: `protox` parses
//! the files into a descriptor set, `tonic-prost-build` generates the code, and
//! the descriptor set is kept in `OUT_DIR` for gRPC server reflection. The public
//! API (`palr.v1`) and the admin API (`palr.admin.v1`) get a descriptor set each,
//! so the public listener's reflection never lists the admin service.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for (proto, descriptor) in [
        ("proto/palr/v1/recommender.proto", "palr_descriptor.bin"),
        (
            "proto/palr/admin/v1/admin.proto",
            "palr_admin_descriptor.bin",
        ),
    ] {
        println!("cargo:rerun-if-changed={proto}");
        let fds = protox::compile([proto], ["proto"])?;
        std::fs::write(out.join(descriptor), prost::Message::encode_to_vec(&fds))?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            // Malformed requests are INVALID_ARGUMENT, not prost's INTERNAL (src/proto_codec.rs).
            .codec_path("crate::proto_codec::PalrCodec")
            .compile_fds(fds)?;
    }
    Ok(())
}
