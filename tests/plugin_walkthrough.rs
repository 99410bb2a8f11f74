//! plugins/README.md, "From an empty folder to a deployed plugin", run step by step as an outside
//! team would: the template copied into a temporary folder and renamed `acme`, built with cargo
//! against this checkout's SDK through the README's `[patch]`, checked with `palr plugin check`,
//! deployed by rename, served by `palr serve` with the configuration the README quotes
//! (`plugins/template/palr.toml`, loaded as it is), listed, queried and scraped, then released
//! again as 0.1.1 and served after a restart. Each command run here must be written in the
//! README, and each edit must find exactly the text the README says to change, so the steps
//! cannot drift from the code.
//!
//! Needs cargo (the one running the tests), the crates the workspace already uses in cargo's
//! cache (the template is built offline, like the rest of the suite), the default model,
//! MovieLens-100k and the workspace's plugins (scripts/test.sh). Unix only (signals, `.so`).
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The README, and its fenced code blocks with their list indentation removed.
struct Readme {
    text: String,
    blocks: Vec<String>,
}

impl Readme {
    fn load() -> Self {
        let text = std::fs::read_to_string(common::repo().join("plugins/README.md")).unwrap();
        let mut blocks = Vec::new();
        let mut current: Option<(usize, String)> = None;
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if trimmed.starts_with("```") {
                match current.take() {
                    Some((_, block)) => blocks.push(block),
                    None => current = Some((indent, String::new())),
                }
            } else if let Some((indent, block)) = current.as_mut() {
                block.push_str(line.get(*indent..).unwrap_or(""));
                block.push('\n');
            }
        }
        Self { text, blocks }
    }

    /// The README's walk-through must contain `what` (a command this test runs, an edit it
    /// makes).
    fn says(&self, what: &str) {
        let section = self
            .text
            .split("## From an empty folder to a deployed plugin")
            .nth(1)
            .expect("plugins/README.md has the walk-through section")
            .split("\n## ")
            .next()
            .unwrap();
        assert!(
            section.contains(what),
            "plugins/README.md's walk-through no longer says `{what}`, which \
             tests/plugin_walkthrough.rs runs: update one or the other"
        );
    }

    /// The code block holding `marker`.
    fn block(&self, marker: &str) -> &str {
        self.blocks
            .iter()
            .find(|b| b.contains(marker))
            .unwrap_or_else(|| panic!("plugins/README.md has no code block with `{marker}`"))
    }
}

/// Replaces the one occurrence of `from` in `file` with `to`.
fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{} should hold `{from}` once (plugins/README.md tells to change it)",
        file.display()
    );
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// Copies a directory tree, leaving out build output.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// `cargo ARGS` in the plugin's folder, as the team runs it. Offline: the crates it needs are
/// the workspace's, already in cargo's cache. The plugin's `target/` is a link to a folder
/// that outlives the test, so later runs rebuild only the plugin.
fn cargo(dir: &Path, args: &[&str]) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env("CARGO_NET_OFFLINE", "true")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn palr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palr"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Step 5's deployment: beside the final name, then renamed over it.
fn deploy(lib: &Path, plugins: &Path) {
    let staged = plugins.join(".libpalr_retriever_acme.so.new");
    std::fs::copy(lib, &staged).unwrap();
    std::fs::rename(&staged, plugins.join("libpalr_retriever_acme.so")).unwrap();
}

/// A `palr serve` process, killed if a test fails while it runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Harmless once it has exited.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `palr serve`: its gRPC and metrics addresses, and its log lines.
struct Server {
    process: Running,
    grpc: String,
    metrics: std::net::SocketAddr,
    log: mpsc::Receiver<String>,
    loaded: Vec<serde_json::Value>,
}

/// `palr serve --config CONFIG` in `workdir`, until it says it is serving.
fn serve(config: &Path, workdir: &Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_palr"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(workdir)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut process = Running(child);
    let (tx, rx) = mpsc::channel();
    let stderr = process.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut loaded = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("palr serve did not report serving");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let fields = &v["fields"];
        if fields["message"] == "retriever loaded" {
            loaded.push(fields.clone());
        }
        if fields["message"] == "serving" {
            let metrics = fields["metrics"].as_str().unwrap();
            let metrics = metrics
                .strip_prefix("http://")
                .and_then(|m| m.strip_suffix("/metrics"))
                .unwrap()
                .parse()
                .unwrap();
            let grpc = format!("http://{}", fields["grpc"].as_str().unwrap());
            return Server {
                process,
                grpc,
                metrics,
                log: rx,
                loaded,
            };
        }
    }
}

impl Server {
    /// SIGTERM: drains and exits 0.
    fn stop(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.process.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.process.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "palr serve did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let log: Vec<String> = self.log.try_iter().collect();
        assert!(status.success(), "exit {status:?}: {}", log.join("\n"));
    }

    /// What a client sees of the plugin: the `--list-retrievers` line, a retrieval, the
    /// metric and the load log line, all naming `version`.
    fn shows(&self, readme: &Readme, version: &str) {
        let acme = self
            .loaded
            .iter()
            .find(|f| f["retriever"] == "acme")
            .expect("a `retriever loaded` line for acme");
        assert_eq!(
            (&acme["plugin"], &acme["version"], &acme["abi"]),
            (
                &serde_json::json!("acme"),
                &serde_json::json!(version),
                &serde_json::json!(palr::retrieval::ABI_VERSION)
            ),
            "{acme}"
        );

        readme.says("palr recommend --list-retrievers");
        let list = stdout_of(&palr(&[
            "recommend",
            "--addr",
            &self.grpc,
            "--list-retrievers",
        ]));
        let line = list
            .lines()
            .find(|l| l.starts_with("acme "))
            .unwrap_or_else(|| panic!("no acme line in\n{list}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[..5],
            [
                "acme",
                "acme",
                version,
                &palr::retrieval::ABI_VERSION.to_string(),
                "no"
            ],
            "{list}"
        );
        assert!(list.lines().next().unwrap().contains("version"), "{list}");

        readme.says("palr recommend --retrieve-only --retriever acme --history 1,2,3");
        let got = stdout_of(&palr(&[
            "recommend",
            "--addr",
            &self.grpc,
            "--retrieve-only",
            "--retriever",
            "acme",
            "--history",
            "1,2,3",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        let items = v["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{got}");
        assert_eq!(v["retriever"], "acme", "{got}");

        readme.says("grep palr_retriever_info");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let scrape = rt.block_on(common::scrape(self.metrics));
        let series = format!(
            "palr_retriever_info{{abi=\"{}\",plugin=\"acme\",retriever=\"acme\",version=\"{version}\"}} 1",
            palr::retrieval::ABI_VERSION
        );
        assert!(scrape.contains(&series), "no `{series}` in\n{scrape}");
        let info: Vec<&str> = scrape
            .lines()
            .filter(|l| l.starts_with("palr_retriever_info{") && l.contains("\"acme\""))
            .collect();
        assert_eq!(info.len(), 1, "{info:?}");
    }
}

#[test]
fn an_outside_team_ships_a_plugin_as_the_readme_says() {
    let readme = Readme::load();
    let repo = common::repo();
    let tmp = tempfile::tempdir().unwrap();

    // Step 1: copy the template, name the plugin.
    readme.says("cp -r palr/plugins/template acme && cd acme");
    let acme = tmp.path().join("acme");
    copy_tree(&repo.join("plugins/template"), &acme);
    readme.says("`name = \"palr-retriever-template\"` to `name = \"palr-retriever-acme\"`");
    edit(
        &acme.join("Cargo.toml"),
        "name = \"palr-retriever-template\"",
        "name = \"palr-retriever-acme\"",
    );
    readme.says("change `c\"template\"` to `c\"acme\"`");
    edit(&acme.join("src/lib.rs"), "c\"template\"", "c\"acme\"");

    // Step 2: the SDK by version, pointed at this checkout by the README's `[patch]`.
    let manifest = std::fs::read_to_string(acme.join("Cargo.toml")).unwrap();
    let dependency = format!(
        "palr-retriever-sdk = \"0.{}\"",
        palr::retrieval::ABI_VERSION
    );
    readme.says(&dependency);
    assert!(
        manifest.lines().any(|l| l.trim() == dependency),
        "the template depends on `{dependency}`"
    );
    let patch = readme.block("[patch.crates-io]");
    assert!(patch.contains("/path/to/palr/plugins/sdk"), "{patch}");
    std::fs::create_dir_all(acme.join(".cargo")).unwrap();
    std::fs::write(
        acme.join(".cargo/config.toml"),
        patch.replace("/path/to/palr", repo.to_str().unwrap()),
    )
    .unwrap();

    // Step 3: test and build. `target/` outlives the test (see `cargo`).
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-walkthrough-target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, acme.join("target")).unwrap();
    readme.says("cargo test\n");
    cargo(&acme, &["test"]);
    readme.says("cargo build --release\n");
    cargo(&acme, &["build", "--release"]);
    let lib = acme.join("target/release/libpalr_retriever_acme.so");
    assert!(lib.is_file(), "{} not built", lib.display());

    // Step 4: the conformance check.
    readme.says("palr plugin check target/release/libpalr_retriever_acme.so");
    let check = stdout_of(&palr(&["plugin", "check", lib.to_str().unwrap()]));
    let first = format!(
        "PASS load: acme 0.1.0 (ABI {}) — ",
        palr::retrieval::ABI_VERSION
    );
    readme.says(first.trim_end_matches(" — "));
    assert!(check.starts_with(&first), "{check}");
    assert!(
        check
            .lines()
            .all(|l| !l.starts_with("FAIL ") && !l.starts_with("SKIP ")),
        "{check}"
    );

    // Step 5: deploy by rename into the server's working directory, configured by the file
    // the README quotes, loaded as it is (the test adds only its own addresses, model and
    // data, in tables the snippet does not use).
    readme.says(
        "cp target/release/libpalr_retriever_acme.so /opt/palr/plugins/.libpalr_retriever_acme.so.new",
    );
    readme.says(
        "mv /opt/palr/plugins/.libpalr_retriever_acme.so.new /opt/palr/plugins/libpalr_retriever_acme.so",
    );
    let workdir = tmp.path().join("opt/palr");
    let plugins = workdir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    deploy(&lib, &plugins);
    let snippet = std::fs::read_to_string(repo.join("plugins/template/palr.toml")).unwrap();
    assert!(
        readme.blocks.contains(&snippet),
        "plugins/README.md must quote plugins/template/palr.toml exactly (step 5)"
    );
    let data = palr::data::default_data_dir().join("ml-100k");
    let data = if data.is_relative() {
        repo.join(data)
    } else {
        data
    };
    let config = tmp.path().join("palr.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\naddr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
             log_format = \"json\"\nwarmup = false\n\n{snippet}\n\
             [model]\ndir = {:?}\n[data]\ndir = {:?}\n",
            common::model_dir(),
            data
        ),
    )
    .unwrap();
    readme.says("palr serve --config palr.toml");
    readme.says("logs `retriever loaded` with the retriever, plugin, version and ABI");
    let server = serve(&config, &workdir);

    // Step 6: what runs, and which version.
    server.shows(&readme, "0.1.0");

    // Step 7: a new version, deployed by rename, served after a restart.
    readme.says("bump `version` in `Cargo.toml`");
    edit(
        &acme.join("Cargo.toml"),
        "version = \"0.1.0\"",
        "version = \"0.1.1\"",
    );
    cargo(&acme, &["build", "--release"]);
    let check = stdout_of(&palr(&["plugin", "check", lib.to_str().unwrap()]));
    assert!(check.starts_with("PASS load: acme 0.1.1 "), "{check}");
    deploy(&lib, &plugins);
    // The running server still serves what it loaded.
    server.shows(&readme, "0.1.0");
    readme.says("stop it with `SIGTERM`");
    server.stop();
    let server = serve(&config, &workdir);
    server.shows(&readme, "0.1.1");
    readme.says("Reloading without a restart comes with the admin API");
    server.stop();
}
