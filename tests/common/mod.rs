//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default model's directory (`PALR_MODEL_DIR` or `models/smollm2-135m-instruct`).
/// Fails the test with what to run when it is missing: CI fetches it first.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("PALR_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/smollm2-135m-instruct"));
    assert!(
        dir.join("config.json").exists(),
        "default model not found at {}: run `cargo run --release -- model fetch` (or scripts/test.sh, which does) \
         or set PALR_MODEL_DIR",
        dir.display()
    );
    dir
}

/// MovieLens-100k's directory (`$PALR_DATA_DIR/ml-100k` or data/ml-100k); fails the test
/// with what to run when it is missing: CI fetches it first.
pub fn ml100k_dir() -> PathBuf {
    let mut dir = palr::data::default_data_dir().join("ml-100k");
    if dir.is_relative() {
        dir = repo().join(dir);
    }
    assert!(
        dir.join("ml-100k.item").exists(),
        "MovieLens-100k not found at {}: run `palr data fetch ml-100k` (scripts/test.sh does) or set PALR_DATA_DIR",
        dir.display()
    );
    dir
}

/// The SmolLM2 reference fixture (see tests/fixtures/README.md).
pub fn reference() -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/smollm2-reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

/// `GET /metrics` of a running server over a plain HTTP/1.1 connection: the whole
/// response, after checking it is a 200 in Prometheus' text format.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: palr\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 200"), "{buf}");
    assert!(buf.contains("text/plain; version=0.0.4"), "{buf}");
    buf
}
