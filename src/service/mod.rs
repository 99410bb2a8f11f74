//! The ranking service: palr as a gRPC server (`palr serve`) and its client (`palr
//! recommend`, `palr bench recommend`).
//!
//! A request flows PALR's way (Yang et al. 2023, "PALR: Personalization Aware LLMs for
//! Recommendation"): history item ids → a retriever plugin proposes candidates → the LLM
//! ranks them → item ids, titles, scores and per-stage times. The API is
//! `proto/palr/v1/recommender.proto` (gRPC over HTTP/2), plus the standard
//! `grpc.health.v1.Health` and server reflection.
//!
//! - [`admin`]: the admin API (`palr.admin.v1.Admin`, its own listener): retriever and data
//!   reloads, adapters;
//! - [`config`]: the TOML configuration and its layers (defaults, file, `PALR_*__*`
//!   environment, flags);
//! - [`recommender`]: the transport-free core — what is loaded ([`Recommender::load`]) and
//!   the recommend / rank / retrieve flows with their validation, deadlines and admission;
//! - [`admission`]: bounded ranker concurrency and wait queue;
//! - [`bulkhead`]: retriever isolation: a plugin thread pool, per-retriever call bounds and
//!   circuit breakers;
//! - [`error`]: [`ServiceError`] and the one mapping of every layer's error to a status;
//! - [`grpc`]: the tonic service, the only place protobuf messages are converted;
//! - [`server`]: listeners, health, reflection, metrics endpoint, graceful shutdown;
//! - [`conn`]: connection limits, idle timeouts, per-caller rate limits, token checks;
//! - [`security`]: TLS / mutual TLS of the listener and bearer tokens;
//! - [`metrics`]: the Prometheus registry and `/metrics`;
//! - [`client`]: a typed client over the generated one, for the CLI and `palr bench
//!   recommend` (`crate::bench::recommend`).
//!
//! The layers below (engine, rank, retrieval, data) know nothing of gRPC.

pub mod admin;
pub mod admission;
pub mod bulkhead;
pub mod client;
pub mod config;
pub mod conn;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod recommender;
pub mod security;
pub mod server;

pub use config::{ConfigError, ConfigSource, Overrides, ServerConfig};
pub use error::{ServiceError, StartError};
pub use metrics::Metrics;
pub use recommender::{Mode, Recommender};
pub use server::{Drained, RunningServer, serve};
