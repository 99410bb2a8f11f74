//! `palr serve` as a process: signals and exit codes. A SIGTERM right after the server says it
//! is serving drains and exits 0; a drain that times out with a request still running exits
//! non-zero and says how many requests it cut off; SIGHUP reloads the retrievers from the
//! configuration file (and a broken file leaves them as they are).
//!
//! Needs the default model, MovieLens-100k and the plugins (scripts/test.sh fetches and builds
//! them). Unix only (signals).
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use palr::proto::v1 as pb;

/// Starts `palr serve` with `extra` TOML appended to a test configuration; returns the child,
/// the gRPC address from its "serving" log line, and its stderr lines (as they come).
fn start(extra: &str) -> (Child, String, mpsc::Receiver<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palr.toml");
    let data = palr::data::default_data_dir().join("ml-100k");
    let data = if data.is_relative() {
        common::repo().join(data)
    } else {
        data
    };
    std::fs::write(
        &cfg,
        format!(
            "[server]\naddr = \"127.0.0.1:0\"\nmetrics_addr = \"\"\nlog_format = \"json\"\n\
             warmup = false\n{extra}\n\
             [model]\ndir = {:?}\n[data]\ndir = {:?}\n",
            common::model_dir(),
            data
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palr"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("palr serve did not report serving");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "serving" {
            break v["fields"]["grpc"].as_str().unwrap().to_owned();
        }
    };
    (child, addr, rx, dir)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for the exit and returns its status and every remaining stderr line.
fn finish(mut child: Child, rx: mpsc::Receiver<String>) -> (std::process::ExitStatus, String) {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "palr serve did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    (status, rest.join("\n"))
}

#[test]
fn sigterm_right_after_serving_drains_and_exits_zero() {
    let (child, _addr, rx, _dir) = start("");
    signal(&child, "-TERM");
    let (status, log) = finish(child, rx);
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("drained"),
        "{log}"
    );
}

#[test]
fn a_drain_that_times_out_exits_non_zero_with_the_count() {
    // A retriever that takes 8 s, no per-call limit, and a 1 s drain.
    let (child, addr, rx, _dir) = start(
        "drain_timeout_s = 1\n\
         [retrieval]\ntimeout_ms = 0\ndefault = \"markov\"\n\
         [[retrieval.retrievers]]\nname = \"markov\"\npath = \"palr_retriever_markov\"\n\
         [[retrieval.retrievers]]\nname = \"slow\"\npath = \"palr_retriever_testkit\"\n\
         config = { sleep_ms = 8000 }\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let call = rt.spawn(async move {
        let mut c = pb::recommender_client::RecommenderClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.retrieve(pb::RetrieveRequest {
            history: vec!["1".into(), "2".into()],
            retriever: "slow".into(),
            num_candidates: 5,
            ..Default::default()
        })
        .await
    });
    // Let the call reach the plugin, then stop the server.
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "-TERM");
    let (status, log) = finish(child, rx);
    assert!(
        !status.success(),
        "a cut-off request must not exit 0: {log}"
    );
    assert!(
        log.contains("cut off 1 accepted requests") || log.contains("\"dropped\":1"),
        "{log}"
    );
    // The caller learnt that its request was lost.
    let r = rt.block_on(call).unwrap();
    assert!(r.is_err(), "{r:?}");
}

/// The next stderr line (JSON) whose message is `message`, within 60 s.
fn wait_for(rx: &mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == message {
            return v;
        }
    }
}

#[test]
fn sighup_reloads_the_retrievers_from_the_file() {
    let markov = "[[retrieval.retrievers]]\nname = \"markov\"\npath = \"palr_retriever_markov\"\n";
    let (child, addr, rx, dir) = start(&format!("[retrieval]\ndefault = \"markov\"\n{markov}"));
    // No token has the admin scope: the admin API is off, and the log says so.
    wait_for(&rx, "admin API off");
    let file = dir.path().join("palr.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let knn = "[[retrieval.retrievers]]\nname = \"itemknn\"\npath = \"palr_retriever_itemknn\"\n";
    std::fs::write(&file, text.replace(markov, &format!("{markov}{knn}"))).unwrap();
    signal(&child, "-HUP");
    let v = wait_for(&rx, "retrievers reloaded");
    assert_eq!(v["fields"]["trigger"], "SIGHUP", "{v}");
    assert_eq!(v["fields"]["added"], "itemknn", "{v}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let names = |addr: String| {
        rt.block_on(async move {
            let mut c =
                pb::recommender_client::RecommenderClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
            let list = c
                .list_retrievers(pb::ListRetrieversRequest {})
                .await
                .unwrap()
                .into_inner();
            list.retrievers
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(names(addr.clone()), ["itemknn", "markov"]);
    // A file that does not parse: logged, and the retrievers stay.
    std::fs::write(&file, format!("{text}\n[retrieval\n")).unwrap();
    signal(&child, "-HUP");
    let v = wait_for(
        &rx,
        "retriever reload failed; the retrievers in use are unchanged",
    );
    assert!(
        v["fields"]["error"].as_str().unwrap().contains("palr.toml"),
        "{v}"
    );
    assert_eq!(names(addr), ["itemknn", "markov"]);
    signal(&child, "-TERM");
    let (status, log) = finish(child, rx);
    assert!(status.success(), "exit {status:?}: {log}");
}
