//! The conformance kit: runs any retriever plugin library through the ABI contract and reports
//! what it does wrong, check by check.
//!
//! The plugin is loaded through the server's own host code ([`Retriever`]), on two synthetic
//! views: one with users, interactions, timestamps, user ids and the catalogue's item data, and
//! one with the same catalogue but no users and no interactions at all. Then:
//!
//! - many queries with random histories (some with timestamps and a user id), random extra
//!   exclusions and every kind of size (0, 1, a random size, `n_items`, more than `n_items`),
//!   plus edge cases (everything but one item excluded): every answer must succeed, hold at
//!   most `k` items, all in range, none in the history or the exclusions, none twice, scores
//!   finite and non-increasing. The host already refuses such answers; the kit turns each
//!   refusal into a finding of the matching check, and re-checks the answers it accepted;
//! - the same queries from [`Options::threads`] threads at once on one instance must give the
//!   same answers as one thread (a plugin must be thread-safe, and its answers must not depend
//!   on what else runs);
//! - configs a plugin must refuse (an unknown option, text that is not JSON) must give a clean
//!   error: the error status with a message, not a panic or a success;
//! - instances are created, queried and destroyed repeatedly, some alive side by side, and must
//!   answer as the first one did.
//!
//! Everything is reported, nothing panics: a [`Report`] is a list of named [`Check`]s. A
//! plugin that crashes the process (a segfault, an abort, a Rust panic unwinding out of a
//! hand-written `extern "C"` function) cannot be reported on from inside that process: the kit
//! dies with it, which is a failure too. `palr plugin check LIB` is the command-line face of
//! [`check_plugin`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palr_retriever_sdk::abi::STAGE_ALL;
use palr_retriever_sdk::{ItemFields, ItemTable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{ABI_VERSION, PluginFailure, QueryContext, RetrievalError, Retriever, TrainingView};

/// The plugin loads on the synthetic view (entry symbol, ABI version, table, `create`,
/// `describe`).
pub const LOAD: &str = "load";
/// The plugin loads on a view with no users and no interactions.
pub const LOAD_EMPTY_VIEW: &str = "load on an empty view";
/// Every valid query is answered with the OK status (no error, no panic).
pub const ANSWERS: &str = "queries answered";
/// Never more candidates than the capacity.
pub const CAPACITY: &str = "count within capacity";
/// Every item index is below `n_items`.
pub const IN_RANGE: &str = "items in range";
/// No history item and no excluded item is proposed.
pub const NOT_EXCLUDED: &str = "no history or excluded items";
/// No item is proposed twice in one answer.
pub const NO_DUPLICATES: &str = "no duplicate items";
/// Every score is finite.
pub const FINITE: &str = "finite scores";
/// Scores never increase: best first.
pub const NON_INCREASING: &str = "scores non-increasing";
/// Only documented status codes, and error texts that fit their buffer.
pub const PROTOCOL: &str = "status codes and error text";
/// Concurrent calls on one instance give the same answers as sequential calls.
pub const CONCURRENT: &str = "concurrent calls match sequential";
/// Configs the plugin must refuse give a clean error.
pub const BAD_CONFIG: &str = "bad config is a clean error";
/// Instances created and destroyed repeatedly answer like the first.
pub const CREATE_DESTROY: &str = "create/destroy repeated";

/// The checks on query answers, in report order.
const ANSWER_CHECKS: [&str; 8] = [
    ANSWERS,
    CAPACITY,
    IN_RANGE,
    NOT_EXCLUDED,
    NO_DUPLICATES,
    FINITE,
    NON_INCREASING,
    PROTOCOL,
];

/// The sizes the queries ask for, for messages.
const SIZES: &str = "k = 0, 1, random, n_items, more than n_items";

/// How many examples of a violation a failed check's message quotes.
const EXAMPLES: usize = 3;

/// Size of the synthetic catalogue.
const N_ITEMS: u32 = 50;
/// Users in the synthetic view.
const N_USERS: usize = 80;
/// Items no synthetic user ever interacted with (the last ones of the catalogue).
const UNSEEN_ITEMS: u32 = 3;
/// The request time of every query (fixed, so that answers can be compared).
const REQUEST_TIME_MS: i64 = 1_700_000_000_000;

/// Whether a check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin meets this part of the contract.
    Pass,
    /// It does not; the message says how.
    Fail,
    /// Not run, because a check it depends on failed (that one fails the report).
    Skip,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        })
    }
}

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// One of this module's constants ([`LOAD`], [`NOT_EXCLUDED`], ...).
    pub name: &'static str,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// What was checked, or what went wrong (with examples).
    pub message: String,
}

impl Check {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.outcome, self.name, self.message)
    }
}

/// What the kit found about one plugin library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The library checked.
    pub library: PathBuf,
    /// `name version (ABI n)` from the plugin's table, when it loaded.
    pub plugin: Option<String>,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }

    /// The check called `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    /// One line per check, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "{c}")?;
        }
        let failed = self.failures().count();
        let what = self.plugin.as_deref().unwrap_or("plugin");
        if failed == 0 {
            write!(
                f,
                "{what} at {} passed {} checks",
                self.library.display(),
                self.checks.len()
            )
        } else {
            write!(
                f,
                "{what} at {} FAILED {failed} of {} checks",
                self.library.display(),
                self.checks.len()
            )
        }
    }
}

/// How hard the kit works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Seed of the synthetic data and queries (a report is reproducible from it).
    pub seed: u64,
    /// Random queries per view (edge cases come on top).
    pub queries: usize,
    /// Threads calling one instance at once.
    pub threads: usize,
    /// Instances created and destroyed one after the other.
    pub repeats: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 0x5EED_9A17,
            queries: 300,
            threads: 8,
            repeats: 20,
        }
    }
}

/// Runs the plugin library at `library`, configured with `config_json`, through every check
/// with the default [`Options`].
pub fn check_plugin(library: &Path, config_json: &str) -> Report {
    check_plugin_with(library, config_json, &Options::default())
}

/// [`check_plugin`] with explicit options.
pub fn check_plugin_with(library: &Path, config_json: &str, options: &Options) -> Report {
    let mut kit = Kit {
        library,
        config: config_json,
        checks: Vec::new(),
    };
    let plugin = kit.run(options);
    Report {
        library: library.to_owned(),
        plugin,
        checks: kit.checks,
    }
}

/// One query the kit sends.
#[derive(Debug, Clone)]
struct Probe {
    history: Vec<u32>,
    timestamps: Option<Vec<i64>>,
    exclude: Vec<u32>,
    k: usize,
    user_id: String,
}

impl Probe {
    fn new(history: Vec<u32>, exclude: Vec<u32>, k: usize) -> Self {
        Self {
            history,
            timestamps: None,
            exclude,
            k,
            user_id: String::new(),
        }
    }

    /// The query for messages, shortened.
    fn describe(&self) -> String {
        fn list(v: &[u32]) -> String {
            let shown: Vec<String> = v.iter().take(8).map(u32::to_string).collect();
            let more = if v.len() > 8 {
                format!(", ... {} in all", v.len())
            } else {
                String::new()
            };
            format!("[{}{more}]", shown.join(", "))
        }
        format!(
            "history {}, exclude {}, k {}",
            list(&self.history),
            list(&self.exclude),
            self.k
        )
    }

    /// The sorted union of history and exclusions: what must never come back.
    fn excluded(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self.history.iter().chain(&self.exclude).copied().collect();
        set.into_iter().collect()
    }

    fn run(&self, r: &Retriever) -> Result<Vec<(u32, f32)>, RetrievalError> {
        let ctx = QueryContext {
            history_timestamps: self.timestamps.as_deref(),
            user_id: &self.user_id,
            request_time_ms: REQUEST_TIME_MS,
        };
        r.retrieve_with(&self.history, self.k, &self.exclude, &ctx)
    }
}

/// An answer in a form that compares exactly (scores by their bits) for the determinism
/// checks.
type Answer = Result<Vec<(u32, u32)>, String>;

fn answer(result: &Result<Vec<(u32, f32)>, RetrievalError>) -> Answer {
    match result {
        Ok(list) => Ok(list.iter().map(|&(i, s)| (i, s.to_bits())).collect()),
        Err(e) => Err(e.to_string()),
    }
}

fn show_answer(a: &Answer) -> String {
    match a {
        Ok(list) => {
            let shown: Vec<String> = list
                .iter()
                .take(6)
                .map(|&(i, s)| format!("{i}:{}", f32::from_bits(s)))
                .collect();
            let more = if list.len() > 6 { ", ..." } else { "" };
            format!("{} items [{}{more}]", list.len(), shown.join(", "))
        }
        Err(e) => format!("error `{e}`"),
    }
}

/// Violations found, per check.
#[derive(Default)]
struct Findings {
    /// (check name, number of violating queries, first examples).
    by_check: Vec<(&'static str, usize, Vec<String>)>,
}

impl Findings {
    fn add(&mut self, check: &'static str, example: String) {
        match self.by_check.iter_mut().find(|(c, ..)| *c == check) {
            Some((_, n, examples)) => {
                *n += 1;
                if examples.len() < EXAMPLES {
                    examples.push(example);
                }
            }
            None => self.by_check.push((check, 1, vec![example])),
        }
    }

    fn get(&self, check: &str) -> Option<(usize, &[String])> {
        self.by_check
            .iter()
            .find(|(c, ..)| *c == check)
            .map(|(_, n, e)| (*n, e.as_slice()))
    }
}

/// The check a host contract message belongs to (the host's wording, `retriever.rs`).
fn classify(problem: &str) -> &'static str {
    if problem.contains("for a buffer of capacity") {
        CAPACITY
    } else if problem.contains("is out of range") {
        IN_RANGE
    } else if problem.contains("in the history or the exclusion set") {
        NOT_EXCLUDED
    } else if problem.contains("proposed more than once") {
        NO_DUPLICATES
    } else if problem.contains("has score") {
        FINITE
    } else if problem.contains("best first") {
        NON_INCREASING
    } else {
        PROTOCOL
    }
}

/// The kit's own check of an answer the host accepted (it should find nothing: the host checks
/// the same; this guards the kit against a host that stops checking).
fn recheck(list: &[(u32, f32)], probe: &Probe, n_items: u32, findings: &mut Findings, at: &str) {
    let excluded = probe.excluded();
    if list.len() > probe.k {
        findings.add(
            CAPACITY,
            format!("{at}: {} candidates for k = {}", list.len(), probe.k),
        );
    }
    let mut seen = BTreeSet::new();
    for (pos, &(item, score)) in list.iter().enumerate() {
        if item >= n_items {
            findings.add(IN_RANGE, format!("{at}: item {item} at #{pos}"));
        }
        if excluded.binary_search(&item).is_ok() {
            findings.add(NOT_EXCLUDED, format!("{at}: item {item} at #{pos}"));
        }
        if !seen.insert(item) {
            findings.add(NO_DUPLICATES, format!("{at}: item {item} again at #{pos}"));
        }
        if !score.is_finite() {
            findings.add(FINITE, format!("{at}: score {score} at #{pos}"));
        }
        if pos > 0 && score > list[pos - 1].1 {
            findings.add(
                NON_INCREASING,
                format!("{at}: score {score} at #{pos} after {}", list[pos - 1].1),
            );
        }
    }
}

/// Files one query's result under the checks it breaks, if any.
fn judge(
    result: &Result<Vec<(u32, f32)>, RetrievalError>,
    probe: &Probe,
    n_items: u32,
    findings: &mut Findings,
    at: &str,
) {
    match result {
        Ok(list) => recheck(list, probe, n_items, findings, at),
        Err(RetrievalError::Contract { problem, .. }) => {
            findings.add(classify(problem), format!("{at}: {problem}"));
        }
        Err(RetrievalError::Retrieve {
            failure, message, ..
        }) => {
            let check = match failure {
                PluginFailure::Error | PluginFailure::Panic => ANSWERS,
                // The plugin claims the host's arguments were broken: a valid query was refused.
                PluginFailure::RejectedArguments => PROTOCOL,
            };
            findings.add(
                check,
                format!("{at}: retrieve failed ({failure}): {message}"),
            );
        }
        Err(other) => findings.add(ANSWERS, format!("{at}: {other}")),
    }
}

/// The synthetic catalogue: ids, titles, some years, genres and one extra attribute.
fn catalogue() -> Result<Arc<ItemTable>, String> {
    const GENRES: [&str; 5] = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"];
    let items = (0..N_ITEMS)
        .map(|i| ItemFields {
            id: format!("item-{i}"),
            title: format!("Item {i}"),
            year: (i % 4 != 0).then_some(1980 + i as i32),
            genres: (0..(i % 3) as usize)
                .map(|g| GENRES[(i as usize + g) % GENRES.len()].to_owned())
                .collect(),
            attrs: if i % 5 == 0 {
                Vec::new()
            } else {
                vec![("colour".to_owned(), format!("shade-{}", i % 7))]
            },
        })
        .collect();
    ItemTable::new(items).map(Arc::new)
}

/// The view with users: popularity skewed towards low indices, the last items never seen,
/// timestamps increasing per user, user ids.
fn synthetic_view(rng: &mut StdRng) -> Result<TrainingView, String> {
    let seen_items = N_ITEMS - UNSEEN_ITEMS;
    let mut offsets = vec![0u64];
    let mut items = Vec::new();
    let mut timestamps = Vec::new();
    for u in 0..N_USERS {
        let len = rng.random_range(1..=20);
        let mut t = 1_000_000 + 3_600 * u as i64;
        for _ in 0..len {
            let x: f64 = rng.random();
            items.push(((x * x) * f64::from(seen_items)) as u32 % seen_items);
            t += rng.random_range(1..600);
            timestamps.push(t);
        }
        offsets.push(items.len() as u64);
    }
    let users = (0..N_USERS).map(|u| format!("user-{u}")).collect();
    let view =
        TrainingView::new(N_ITEMS, offsets, items, Some(timestamps)).map_err(|e| e.to_string())?;
    Ok(view
        .with_items(catalogue()?)
        .and_then(|v| v.with_user_ids(users))
        .map_err(|e| e.to_string())?
        .with_stage(STAGE_ALL))
}

/// The same catalogue with no users and no interactions.
fn empty_view() -> Result<TrainingView, String> {
    let view = TrainingView::new(N_ITEMS, vec![0], Vec::new(), Some(Vec::new()))
        .map_err(|e| e.to_string())?;
    Ok(view
        .with_items(catalogue()?)
        .and_then(|v| v.with_user_ids(Vec::new()))
        .map_err(|e| e.to_string())?
        .with_stage(STAGE_ALL))
}

/// Random queries of every size, then the edge cases.
fn probes(rng: &mut StdRng, n: usize) -> Vec<Probe> {
    let n_items = N_ITEMS as usize;
    let sizes = |i: usize, rng: &mut StdRng| match i % 5 {
        0 => 0,
        1 => 1,
        2 => n_items,
        3 => n_items + 7,
        _ => rng.random_range(2..n_items),
    };
    let mut out: Vec<Probe> = (0..n)
        .map(|i| {
            let history: Vec<u32> = (0..rng.random_range(0..=8))
                .map(|_| rng.random_range(0..N_ITEMS))
                .collect();
            let exclude: Vec<u32> = (0..rng.random_range(0..=5))
                .map(|_| rng.random_range(0..N_ITEMS))
                .collect();
            let mut p = Probe::new(history, exclude, sizes(i, rng));
            if rng.random_bool(0.5) {
                let mut t = 2_000_000_000;
                p.timestamps = Some(
                    p.history
                        .iter()
                        .map(|_| {
                            t += rng.random_range(0..1_000);
                            t
                        })
                        .collect(),
                );
            }
            if rng.random_bool(0.5) {
                p.user_id = format!("caller-{}", rng.random_range(0..1_000));
            }
            p
        })
        .collect();
    let all: Vec<u32> = (0..N_ITEMS).collect();
    let but = |keep: u32| -> Vec<u32> { all.iter().copied().filter(|&i| i != keep).collect() };
    // Everything but one item excluded, through the history or the exclusions; then nothing
    // left at all (the host answers that itself); then a long history with repeats.
    out.extend([
        Probe::new(but(0), Vec::new(), n_items),
        Probe::new(Vec::new(), but(N_ITEMS - 1), 1),
        Probe::new(vec![5], but(7), n_items + 1),
        Probe::new(all.clone(), Vec::new(), 10),
        Probe::new(all.iter().chain(&all).copied().collect(), Vec::new(), 3),
        Probe::new(Vec::new(), Vec::new(), 1),
        Probe::new(Vec::new(), Vec::new(), n_items),
    ]);
    out
}

/// Configs every plugin must refuse, and why.
const BAD_CONFIGS: [(&str, &str); 2] = [
    (
        r#"{"palr_conformance_no_such_option": true}"#,
        "an unknown option (a typo would go unnoticed)",
    ),
    (r#"{"unterminated"#, "text that is not JSON"),
];

struct Kit<'a> {
    library: &'a Path,
    config: &'a str,
    checks: Vec<Check>,
}

impl Kit<'_> {
    fn record(&mut self, name: &'static str, outcome: Outcome, message: impl Into<String>) {
        self.checks.push(Check {
            name,
            outcome,
            message: message.into(),
        });
    }

    fn pass_or_fail(&mut self, name: &'static str, result: Result<String, String>) {
        match result {
            Ok(m) => self.record(name, Outcome::Pass, m),
            Err(m) => self.record(name, Outcome::Fail, m),
        }
    }

    fn create(&self, view: &Arc<TrainingView>, config: &str) -> Result<Retriever, RetrievalError> {
        // Generation 0: these instances never join a registry.
        Retriever::create(
            "conformance",
            self.library,
            config,
            Arc::clone(view),
            ABI_VERSION,
            0,
        )
    }

    /// Runs every check; returns the plugin's `name version (ABI n)` if it loaded.
    fn run(&mut self, options: &Options) -> Option<String> {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let views = synthetic_view(&mut rng).and_then(|full| Ok((full, empty_view()?)));
        let (full, empty) = match views {
            Ok((f, e)) => (Arc::new(f), Arc::new(e)),
            Err(e) => {
                // A kit bug, not the plugin's: still a report, never a panic.
                self.record(LOAD, Outcome::Fail, format!("building the test views: {e}"));
                return None;
            }
        };
        let probes = probes(&mut rng, options.queries);

        let main = self.create(&full, self.config);
        let plugin = main.as_ref().ok().map(|r| {
            let i = r.info();
            format!(
                "{} {} (ABI {})",
                i.plugin_name, i.plugin_version, i.abi_version
            )
        });
        match &main {
            Ok(r) => {
                let i = r.info();
                let declared = match &i.trained_on {
                    Some(t) => format!("; declares pre-trained state from {}", t.short()),
                    None => String::new(),
                };
                self.record(
                    LOAD,
                    Outcome::Pass,
                    format!(
                        "{} — {:?}, {N_ITEMS} items, {N_USERS} users{declared}",
                        plugin.as_deref().unwrap_or_default(),
                        i.description
                    ),
                );
            }
            Err(e) => self.record(
                LOAD,
                Outcome::Fail,
                format!("with config {:?}: {e}", self.config),
            ),
        }
        let empty_instance = self.create(&empty, self.config);
        self.pass_or_fail(
            LOAD_EMPTY_VIEW,
            match &empty_instance {
                Ok(_) => Ok(format!("{N_ITEMS} items, no users, no interactions")),
                Err(e) => Err(e.to_string()),
            },
        );

        // Queries on both views.
        let mut findings = Findings::default();
        let mut sequential: Option<Vec<Answer>> = None;
        let mut sequential_empty: Option<Vec<Answer>> = None;
        let mut asked = 0;
        for (instance, label, view) in [
            (&main, "view", &full),
            (&empty_instance, "empty view", &empty),
        ] {
            let Ok(r) = instance else { continue };
            let results: Vec<_> = probes.iter().map(|p| p.run(r)).collect();
            for (i, (p, res)) in probes.iter().zip(&results).enumerate() {
                let at = format!("{label} query #{i} ({})", p.describe());
                judge(res, p, view.n_items(), &mut findings, &at);
            }
            asked += probes.len();
            let answers = Some(results.iter().map(answer).collect());
            if label == "view" {
                sequential = answers;
            } else {
                sequential_empty = answers;
            }
        }
        for name in ANSWER_CHECKS {
            if asked == 0 {
                self.record(name, Outcome::Skip, "not run: the plugin did not load");
                continue;
            }
            match findings.get(name) {
                None => self.record(
                    name,
                    Outcome::Pass,
                    format!("{asked} queries on both views ({SIZES})"),
                ),
                Some((n, examples)) => self.record(
                    name,
                    Outcome::Fail,
                    format!("{n} of {asked} queries, e.g. {}", examples.join("; ")),
                ),
            }
        }

        match (&main, &sequential) {
            (Ok(r), Some(seq)) => {
                let result = concurrency(r, &probes, seq, options.threads);
                self.pass_or_fail(CONCURRENT, result);
            }
            _ => self.record(
                CONCURRENT,
                Outcome::Skip,
                "not run: the plugin did not load",
            ),
        }

        let result = self.bad_configs(&full);
        self.pass_or_fail(BAD_CONFIG, result);

        match &sequential {
            Some(seq) => {
                let views = [
                    Some((&full, seq.as_slice())),
                    sequential_empty.as_deref().map(|s| (&empty, s)),
                ];
                let views: Vec<_> = views.into_iter().flatten().collect();
                let result = self.create_destroy(&views, &probes, options.repeats);
                self.pass_or_fail(CREATE_DESTROY, result);
            }
            None => self.record(
                CREATE_DESTROY,
                Outcome::Skip,
                "not run: the plugin did not load",
            ),
        }
        plugin
    }

    fn bad_configs(&self, view: &Arc<TrainingView>) -> Result<String, String> {
        let mut problems = Vec::new();
        for (config, what) in BAD_CONFIGS {
            match self.create(view, config) {
                Ok(_) => problems.push(format!("accepted {what}: {config}")),
                Err(RetrievalError::Init {
                    failure: PluginFailure::Error,
                    message,
                    ..
                }) => {
                    if message.trim().is_empty() {
                        problems.push(format!("refused {what} ({config}) without a message"));
                    }
                }
                Err(e) => problems.push(format!("{what} ({config}) was not a clean error: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "refused with a message: {}",
                BAD_CONFIGS.map(|(_, what)| what).join(", ")
            ))
        } else {
            Err(problems.join("; "))
        }
    }

    /// Creates, queries and destroys instances one after the other, taking turns over `views`
    /// (each with the answers of the instance first loaded on it), with a second instance
    /// alive beside the first every fourth round; each must answer as the first one did.
    fn create_destroy(
        &self,
        views: &[(&Arc<TrainingView>, &[Answer])],
        probes: &[Probe],
        repeats: usize,
    ) -> Result<String, String> {
        let sample: Vec<usize> = (0..probes.len()).step_by(probes.len() / 8 + 1).collect();
        for round in 0..repeats {
            let (view, reference) = views[round % views.len()];
            let which = if view.n_users() == 0 {
                "empty view"
            } else {
                "view"
            };
            let first = self
                .create(view, self.config)
                .map_err(|e| format!("round {round} ({which}): {e}"))?;
            let second = if round % 4 == 0 {
                let second = self
                    .create(view, self.config)
                    .map_err(|e| format!("round {round} ({which}), a second live instance: {e}"))?;
                Some(second)
            } else {
                None
            };
            for instance in std::iter::once(&first).chain(&second) {
                for &i in &sample {
                    let got = answer(&probes[i].run(instance));
                    if got != reference[i] {
                        return Err(format!(
                            "round {round}: a new instance on the {which} answered query #{i} \
                             ({}) with {}, the first one with {}",
                            probes[i].describe(),
                            show_answer(&got),
                            show_answer(&reference[i]),
                        ));
                    }
                }
            }
            // Dropping destroys the instances, the second one first.
            drop(second);
            drop(first);
        }
        Ok(format!(
            "{repeats} rounds of create, {} queries, destroy ({} view{}, beside other live \
             instances of the library); same answers every time",
            sample.len(),
            views.len(),
            if views.len() == 1 { "" } else { "s" }
        ))
    }
}

/// Runs every probe again sequentially, then from `threads` threads at once (each in its own
/// order); every answer must equal the first sequential run's.
fn concurrency(
    r: &Retriever,
    probes: &[Probe],
    sequential: &[Answer],
    threads: usize,
) -> Result<String, String> {
    let again: Vec<Answer> = probes.iter().map(|p| answer(&p.run(r))).collect();
    if let Some(i) = (0..probes.len()).find(|&i| again[i] != sequential[i]) {
        return Err(format!(
            "not deterministic even sequentially: query #{i} ({}) gave {}, then {}",
            probes[i].describe(),
            show_answer(&sequential[i]),
            show_answer(&again[i])
        ));
    }
    let threads = threads.max(1);
    let mismatches: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    // Thread t starts at a different query and odd threads go backwards, so
                    // that different queries overlap.
                    let n = probes.len();
                    let order = (0..n).map(move |j| {
                        let j = (j + t * n / threads) % n;
                        if t % 2 == 1 { n - 1 - j } else { j }
                    });
                    let mut bad = Vec::new();
                    for i in order {
                        let got = answer(&probes[i].run(r));
                        if got != sequential[i] && bad.len() < EXAMPLES {
                            bad.push(format!(
                                "thread {t}, query #{i} ({}): {} instead of {}",
                                probes[i].describe(),
                                show_answer(&got),
                                show_answer(&sequential[i])
                            ));
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a checking thread panicked".to_owned()])
            })
            .collect()
    });
    if mismatches.is_empty() {
        Ok(format!(
            "{threads} threads × {} queries on one instance, same answers as one thread",
            probes.len()
        ))
    } else {
        Err(mismatches
            .into_iter()
            .take(EXAMPLES)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_views_are_valid_and_reproducible() {
        let a = synthetic_view(&mut StdRng::seed_from_u64(1)).unwrap();
        let b = synthetic_view(&mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.n_users(), N_USERS);
        assert!(a.items().iter().all(|&i| i < N_ITEMS - UNSEEN_ITEMS));
        assert_eq!(a.stage(), STAGE_ALL);
        let e = empty_view().unwrap();
        assert_eq!(
            (e.n_users(), e.n_interactions(), e.n_items()),
            (0, 0, N_ITEMS)
        );
    }

    #[test]
    fn probes_cover_every_size() {
        let p = probes(&mut StdRng::seed_from_u64(2), 50);
        let n = N_ITEMS as usize;
        for k in [0, 1, n, n + 7] {
            assert!(p.iter().any(|q| q.k == k), "k = {k}");
        }
        assert!(
            p.iter()
                .all(|q| q.history.iter().chain(&q.exclude).all(|&i| i < N_ITEMS))
        );
        assert!(p.iter().all(|q| {
            q.timestamps
                .as_ref()
                .is_none_or(|t| t.len() == q.history.len())
        }));
    }

    #[test]
    fn host_messages_map_to_their_checks() {
        // The host's wording (retriever.rs `check_candidates` and `retrieve_with`).
        let cases = [
            ("returned 5 candidates for a buffer of capacity 4", CAPACITY),
            (
                "candidate #0: item 9 is out of range (n_items = 5)",
                IN_RANGE,
            ),
            (
                "candidate #1: item 2 is in the history or the exclusion set",
                NOT_EXCLUDED,
            ),
            ("item 1 is proposed more than once", NO_DUPLICATES),
            ("candidate #0: item 1 has score NaN", FINITE),
            (
                "candidate #1: score 2 is higher than the previous 1: results must be best first",
                NON_INCREASING,
            ),
            ("retrieve returned unknown status 77", PROTOCOL),
        ];
        for (problem, check) in cases {
            assert_eq!(classify(problem), check, "{problem}");
        }
    }

    #[test]
    fn recheck_finds_what_the_host_would() {
        let probe = Probe::new(vec![1], vec![3], 2);
        let mut f = Findings::default();
        recheck(
            &[(0, 1.0), (2, 2.0), (2, f32::NAN), (3, 0.0), (9, 0.0)],
            &probe,
            5,
            &mut f,
            "q",
        );
        for check in [
            CAPACITY,
            IN_RANGE,
            NOT_EXCLUDED,
            NO_DUPLICATES,
            FINITE,
            NON_INCREASING,
        ] {
            assert!(f.get(check).is_some(), "{check}");
        }
        let mut clean = Findings::default();
        recheck(&[(0, 1.0), (2, 1.0)], &probe, 5, &mut clean, "q");
        assert!(clean.by_check.is_empty());
    }

    #[test]
    fn a_missing_library_is_a_failed_report_not_a_panic() {
        let report = check_plugin(Path::new("/nonexistent/libnothing.so"), "{}");
        assert!(!report.passed());
        assert_eq!(report.plugin, None);
        let load = report.check(LOAD).unwrap();
        assert_eq!(load.outcome, Outcome::Fail);
        assert!(load.message.contains("not found"), "{}", load.message);
        assert_eq!(report.check(CONCURRENT).unwrap().outcome, Outcome::Skip);
        assert!(report.to_string().contains("FAILED"));
    }
}
