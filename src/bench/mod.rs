//! Benchmarks: what `palr bench engine|gpu|recommend|retrieve` measure.
pub mod engine;
pub mod gpu;
pub mod recommend;
