//! palr: PALR-style recommendation ranking with a hand-written LLaMA engine.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and the code map.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod data;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod rank;
pub mod retrieval;
pub mod sampling;
pub mod service;
pub mod sft;
pub mod tokenizer;

pub mod proto_codec;
pub mod util;
pub mod proto {
    //! Generated protobuf/gRPC types of `proto/palr/v1` and `proto/palr/admin/v1` (only
    //! `service` converts them).
    #![allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("palr.v1");
    }
    /// Encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("palr_descriptor");
    /// Generated types of `proto/palr/admin/v1` (the admin API, `service::admin`).
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("palr.admin.v1");
        }
        /// The admin API's descriptor set (reflection on the admin listener only).
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("palr_admin_descriptor");
    }
}
