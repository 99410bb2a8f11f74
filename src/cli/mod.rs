//! Command-line glue (clap definitions and `anyhow` reporting) over the library.

pub mod data;
