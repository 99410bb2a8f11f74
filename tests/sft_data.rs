//! `palr sft-data`: PALR instruction-tuning data from the training histories only.
//!
//! On MovieLens-100k: no user's validation or test item appears in any field of that user's
//! examples; histories and targets are consecutive training items; candidate lists hold the
//! targets plus negatives the user never interacted with; the retrieval tasks' text is exactly
//! the ranker's serving prompt; the same seed gives the same bytes.
//!
//! Needs the default model's tokenizer (`palr model fetch`), `palr data fetch ml-100k` and the
//! plugins (`cargo build --release --workspace`).

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::model_dir;
use palr::chat::{ChatTemplate, Message};
use palr::data::{Catalog, Dataset, InteractionsBuilder, Item, LoadOptions, Split, Stage};
use palr::rank::{PromptBuilder, RankMode, RankerConfig};
use palr::retrieval::{Retriever, RetrieverRegistry, RetrieverSpec, TrainingView};
use palr::sft::{self, CandidateOrder, Example, SftBuilder, SftConfig, Task};
use palr::tokenizer::Tokenizer;

struct Model {
    tok: Tokenizer,
    chat: ChatTemplate,
    ranker: RankerConfig,
    prompts: PromptBuilder,
}

fn model() -> Model {
    let tok = Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap();
    let chat = ChatTemplate::from_model_dir(&model_dir()).unwrap().unwrap();
    let ranker = RankerConfig::default();
    let prompts = PromptBuilder::new(&ranker.prompt, &tok, Some(&chat)).unwrap();
    Model {
        tok,
        chat,
        ranker,
        prompts,
    }
}

fn ml100k() -> (Dataset, Split) {
    let dir = palr::data::default_data_dir().join("ml-100k");
    let ds = Dataset::load(&dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}: run `palr data fetch ml-100k` first"));
    let split = Split::leave_one_out(&ds.interactions);
    (ds, split)
}

/// Every user's training part (what `palr sft-data` fits its hard-negative retriever on).
fn train_view(ds: &Dataset, split: &Split) -> TrainingView {
    palr::eval::training_view(split, &ds.interactions, &ds.catalog, Stage::Valid).unwrap()
}

/// The retriever plugin `library` fitted on `view`.
fn retriever_on(view: TrainingView, library: &str) -> Arc<Retriever> {
    let reg = RetrieverRegistry::new(Arc::new(view));
    reg.load(&RetrieverSpec::new("r", library, "{}")).unwrap();
    reg.get("r").unwrap()
}

/// item-kNN over every user's training part only.
fn hard_negatives(ds: &Dataset, split: &Split) -> Arc<Retriever> {
    retriever_on(train_view(ds, split), "palr_retriever_itemknn")
}

fn config(max: usize) -> SftConfig {
    SftConfig {
        max_examples_per_user: max,
        ..SftConfig::default()
    }
}

#[test]
fn no_held_out_item_appears_and_examples_are_well_formed() {
    let m = model();
    let (ds, split) = ml100k();
    let cfg = config(12);
    let b = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        cfg.clone(),
        Some(hard_negatives(&ds, &split)),
    )
    .unwrap();
    let mut per_task = [0usize; 3];
    for u in 0..split.n_users() as u32 {
        let held_out = [
            split.valid(u).unwrap().target,
            split.test(u).unwrap().target,
        ];
        let train = split.train(u);
        let user_items: HashSet<u32> = ds.interactions.items_of(u).iter().copied().collect();
        let examples = b.user_examples(u, &Task::ALL, 1).unwrap();
        for ex in &examples {
            per_task[Task::ALL.iter().position(|&t| t == ex.task).unwrap()] += 1;
            assert_eq!(ex.user, u);
            for field in [&ex.history, &ex.targets, &ex.candidates] {
                for h in held_out {
                    assert!(
                        !field.contains(&h),
                        "user {u} {:?}: held-out item {h}",
                        ex.task
                    );
                }
            }
            // History then targets are consecutive training items, history capped at 20.
            assert!(!ex.history.is_empty() && ex.history.len() <= 20);
            let start = train
                .windows(ex.history.len())
                .position(|w| w == ex.history.as_slice())
                .expect("history is a window of the training sequence");
            let next = &train[start + ex.history.len()..];
            assert_eq!(&next[..ex.targets.len()], ex.targets.as_slice());
            if ex.history.len() < 20 {
                assert_eq!(start, 0, "a short history starts at the beginning");
            }
            match ex.task {
                Task::Recommend => {
                    assert!(ex.candidates.is_empty());
                    assert_eq!(ex.targets.len(), cfg.future_items.min(next.len()));
                }
                Task::RecommendRetrieval | Task::RecommendRetrievalScore => {
                    let want_targets = if ex.task == Task::RecommendRetrievalScore {
                        1
                    } else {
                        cfg.future_items.min(next.len())
                    };
                    assert_eq!(ex.targets.len(), want_targets);
                    assert_eq!(ex.candidates.len(), want_targets + cfg.negatives);
                    let set: HashSet<u32> = ex.candidates.iter().copied().collect();
                    assert_eq!(set.len(), ex.candidates.len(), "candidates are unique");
                    assert!(ex.targets.iter().all(|t| set.contains(t)));
                    for c in &ex.candidates {
                        assert!(!ex.history.contains(c), "a candidate is in the history");
                        if !ex.targets.contains(c) {
                            assert!(!user_items.contains(c), "negative {c} is the user's");
                        }
                    }
                }
            }
            // The answer names the targets.
            let answer = &ex.messages.last().unwrap().content;
            match ex.task {
                Task::RecommendRetrievalScore => {
                    let pos = ex
                        .candidates
                        .iter()
                        .position(|&c| c == ex.targets[0])
                        .unwrap();
                    assert_eq!(*answer, m.prompts.labels()[pos].0.to_string());
                }
                _ => {
                    let titles: Vec<&str> = ex
                        .targets
                        .iter()
                        .map(|&t| ds.catalog.title(t).unwrap())
                        .collect();
                    assert_eq!(*answer, format!("{}\n", titles.join("\n")));
                }
            }
        }
        // At most the configured number per task, one per position otherwise.
        let positions = train.len() - 1;
        for t in Task::ALL {
            let n = examples.iter().filter(|e| e.task == t).count();
            assert_eq!(
                n,
                positions.min(cfg.max_examples_per_user),
                "user {u} {t:?}"
            );
        }
    }
    assert!(per_task.iter().all(|&n| n > 9000), "{per_task:?}");
}

/// With every negative hard, the negatives are the retriever's top items for the training
/// prefix followed by the targets, minus the user's own items.
#[test]
fn hard_negatives_come_from_the_retriever() {
    let m = model();
    let (ds, split) = ml100k();
    let knn = hard_negatives(&ds, &split);
    let cfg = SftConfig {
        hard_negative_share: 1.0,
        ..config(4)
    };
    let b = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        cfg.clone(),
        Some(knn.clone()),
    )
    .unwrap();
    for u in [0u32, 7, 300] {
        let train = split.train(u);
        let mut exclude: Vec<u32> = ds.interactions.items_of(u).to_vec();
        exclude.sort_unstable();
        for ex in b.user_examples(u, &[Task::RecommendRetrieval], 2).unwrap() {
            let start = train
                .windows(ex.history.len())
                .position(|w| w == ex.history.as_slice())
                .unwrap();
            let mut query = train[..start + ex.history.len()].to_vec();
            query.extend_from_slice(&ex.targets);
            let want: HashSet<u32> = knn
                .retrieve(&query, cfg.negatives, &exclude)
                .unwrap()
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            let got: HashSet<u32> = ex
                .candidates
                .iter()
                .copied()
                .filter(|c| !ex.targets.contains(c))
                .collect();
            assert_eq!(got, want, "user {u}");
        }
    }
}

/// Generate-mode and score-mode examples are the ranker's own prompt: the system and user
/// turns rendered with the chat template equal the serving prompt (shared prefix + suffix).
#[test]
fn retrieval_examples_are_the_serving_prompt() {
    let m = model();
    let (ds, split) = ml100k();
    let b = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        config(2),
        None,
    )
    .unwrap();
    let mut checked = 0;
    for u in [0u32, 10, 500] {
        for ex in b.user_examples(u, &Task::ALL, 9).unwrap() {
            let rendered = m.chat.render(&ex.messages[..2], true).unwrap();
            let title = |i: &u32| ds.catalog.title(*i).unwrap();
            let hist: Vec<&str> = ex.history.iter().map(title).collect();
            let cands: Vec<&str> = ex.candidates.iter().map(title).collect();
            let (mode, k) = match ex.task {
                Task::Recommend => {
                    assert_eq!(
                        ex.messages[0].content,
                        SftConfig::default().recommend_system
                    );
                    assert!(ex.messages[1].content.contains(&hist.join("\n")));
                    continue;
                }
                Task::RecommendRetrieval => (RankMode::Generate, ex.targets.len()),
                Task::RecommendRetrievalScore => (RankMode::Score, cands.len()),
            };
            let serving = format!(
                "{}{}",
                m.tok.decode(m.prompts.prefix(mode), false).unwrap(),
                m.prompts.suffix_text(mode, &hist, None, &cands, k)
            );
            assert_eq!(rendered, serving, "{:?}", ex.task);
            assert_eq!(
                ex.messages[0],
                Message::new("system", &m.ranker.prompt.system)
            );
            assert_eq!(ex.messages[2].role, "assistant");
            checked += 1;
        }
    }
    assert!(checked >= 10);
}

/// Where user `u`'s example `ex` sits in the sequence `seq` (its target's position), and the
/// list the ranker would be served for the history before it: `r`'s top 20, the user's
/// other items left out.
fn served_list(
    r: &Retriever,
    ds: &Dataset,
    u: u32,
    seq: &[u32],
    ex: &Example,
) -> (usize, Vec<u32>) {
    let n = ex.history.len();
    let t = n + seq
        .windows(n + 1)
        .rposition(|w| w[..n] == ex.history[..] && w[n] == ex.targets[0])
        .unwrap();
    let user_items: HashSet<u32> = ds.interactions.items_of(u).iter().copied().collect();
    let mut exclude = seq[..t].to_vec();
    exclude.sort_unstable();
    exclude.dedup();
    let list = r
        .retrieve(&seq[..t], 2000, &exclude)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .filter(|i| ex.targets.contains(i) || !user_items.contains(i))
        .take(20)
        .collect();
    (t, list)
}

/// `retriever` lists are the retriever's own top 20 for the history in its order (the
/// user's other items left out, positions it misses skipped); `retriever-shuffled` lists hold
/// the same items in another order, and the score answer names the target's label wherever
/// it lands.
#[test]
fn retriever_lists_in_served_and_shuffled_order() {
    let m = model();
    let (ds, split) = ml100k();
    let mk = retriever_on(train_view(&ds, &split), "palr_retriever_markov");
    let labels: Vec<char> = m.ranker.prompt.score_labels.chars().collect();
    let (mut checked, mut reordered) = (0, 0);
    for order in [CandidateOrder::Retriever, CandidateOrder::RetrieverShuffled] {
        let b = SftBuilder::new(
            &split,
            &ds.interactions,
            &ds.catalog,
            &m.prompts,
            &m.ranker,
            SftConfig {
                candidate_order: order,
                ..config(3)
            },
            Some(mk.clone()),
        )
        .unwrap();
        for u in [0u32, 5, 42, 300, 900] {
            let seq = b.sequence(u);
            for ex in b
                .user_examples(u, &[Task::RecommendRetrievalScore], 1)
                .unwrap()
            {
                let (_, served) = served_list(&mk, &ds, u, &seq, &ex);
                if order == CandidateOrder::Retriever {
                    assert_eq!(ex.candidates, served, "user {u}");
                } else {
                    let mut x = ex.candidates.clone();
                    reordered += usize::from(x != served);
                    x.sort_unstable();
                    let mut y = served.clone();
                    y.sort_unstable();
                    assert_eq!(x, y, "user {u}: the served items");
                }
                let at = ex
                    .candidates
                    .iter()
                    .position(|&c| c == ex.targets[0])
                    .unwrap();
                assert_eq!(ex.messages[2].content, labels[at].to_string());
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked}");
    assert!(
        reordered * 2 >= checked * 9 / 10,
        "{reordered} of {checked} lists reordered"
    );
}

/// With a tail, examples target only each user's last `tail` training positions, and their
/// lists come from a retriever fitted on every user's training part without that tail: no
/// list is made by a retriever that counted the example's own transition.
#[test]
fn tail_examples_come_after_what_the_retriever_saw() {
    let m = model();
    let (ds, split) = ml100k();
    let tail = 5;
    let view =
        palr::eval::training_view_before_tail(&split, &ds.interactions, &ds.catalog, tail).unwrap();
    for u in [0u32, 17, 942] {
        let (a, b) = (view.offsets()[u as usize], view.offsets()[u as usize + 1]);
        let train = split.train(u);
        assert_eq!(
            &view.items()[a as usize..b as usize],
            &train[..train.len() - tail]
        );
    }
    assert_eq!(
        view.n_interactions() + tail * split.n_users(),
        train_view(&ds, &split).n_interactions()
    );
    let mk = retriever_on(view, "palr_retriever_markov");
    let b = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        SftConfig {
            candidate_order: CandidateOrder::Retriever,
            tail,
            ..config(0)
        },
        Some(mk.clone()),
    )
    .unwrap();
    let mut checked = 0;
    for u in 0..200u32 {
        let seq = b.sequence(u);
        let examples = b
            .user_examples(u, &[Task::RecommendRetrievalScore], 1)
            .unwrap();
        assert!(examples.len() <= tail);
        for ex in examples {
            let (t, served) = served_list(&mk, &ds, u, &seq, &ex);
            assert!(
                t + tail >= seq.len(),
                "user {u}: position {t} of {}",
                seq.len()
            );
            assert_eq!(ex.candidates, served, "user {u}");
            checked += 1;
        }
    }
    assert!(checked >= 100, "{checked}");
}

/// `ranking.item_line` writes history and candidate items with their year and genres in
/// the training text exactly as the ranker does when serving; answers stay titles.
#[test]
fn item_line_reaches_training_prompts() {
    let mut m = model();
    m.ranker.item_line = "{title} ({year}) [{genres}]".into();
    let (ds, split) = ml100k();
    let b = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        config(2),
        None,
    )
    .unwrap();
    let ex = b
        .user_examples(
            0,
            &[Task::RecommendRetrieval, Task::RecommendRetrievalScore],
            3,
        )
        .unwrap();
    assert!(ex.len() >= 2);
    for ex in &ex {
        let line = |i: &u32| m.ranker.item_text(&ds.catalog, *i);
        let hist: Vec<String> = ex.history.iter().map(line).collect();
        let cands: Vec<String> = ex.candidates.iter().map(line).collect();
        let it = ds.catalog.item(ex.history[0]).unwrap();
        assert_eq!(
            hist[0],
            format!(
                "{} ({}) [{}]",
                it.title,
                it.year.unwrap(),
                it.genres.join(", ")
            )
        );
        let h: Vec<&str> = hist.iter().map(String::as_str).collect();
        let c: Vec<&str> = cands.iter().map(String::as_str).collect();
        let (mode, k) = match ex.task {
            Task::RecommendRetrieval => (RankMode::Generate, ex.targets.len()),
            _ => (RankMode::Score, c.len()),
        };
        let serving = format!(
            "{}{}",
            m.tok.decode(m.prompts.prefix(mode), false).unwrap(),
            m.prompts.suffix_text(mode, &h, None, &c, k)
        );
        assert_eq!(m.chat.render(&ex.messages[..2], true).unwrap(), serving);
        if ex.task == Task::RecommendRetrieval {
            // Answers name titles only.
            let first = ds.catalog.title(ex.targets[0]).unwrap();
            assert!(
                ex.messages[2].content.starts_with(&format!("{first}\n")),
                "{:?}",
                ex.messages[2]
            );
        }
    }
    // A broken item line is refused before any example is built.
    m.ranker.item_line = "{name}".into();
    let e = SftBuilder::new(
        &split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        config(2),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("must contain {title}"), "{e}");
}

fn jsonl(m: &Model, ds: &Dataset, split: &Split, seed: u64) -> Vec<u8> {
    let b = SftBuilder::new(
        split,
        &ds.interactions,
        &ds.catalog,
        &m.prompts,
        &m.ranker,
        config(3),
        Some(hard_negatives(ds, split)),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut calls = 0;
    sft::write_jsonl(&b, &Task::ALL, seed, &mut out, &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, split.n_users());
    out
}

#[test]
fn same_seed_same_bytes() {
    let m = model();
    let (ds, split) = ml100k();
    let a = jsonl(&m, &ds, &split, 4);
    assert_eq!(a, jsonl(&m, &ds, &split, 4));
    assert_ne!(a, jsonl(&m, &ds, &split, 5));
    // Every line is the chat layout.
    let text = String::from_utf8(a).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let roles: Vec<&str> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert!(v["task"].as_str().unwrap().starts_with("recommend"));
        assert!(
            ds.interactions
                .user_index(v["user"].as_str().unwrap())
                .is_some()
        );
        n += 1;
    }
    assert_eq!(n, 943 * 3 * 3);
}

/// A user whose validation and test items repeat earlier training items: those items are
/// dropped from every field of that user's examples.
#[test]
fn repeated_held_out_items_are_dropped() {
    let m = model();
    let cat = Catalog::from_items(
        (0..40)
            .map(|i| Item::new(i.to_string(), &format!("Film {i}")))
            .collect(),
    )
    .unwrap();
    let mut b = InteractionsBuilder::new();
    // User "a": 1 2 3 4 5 6, then 2 (valid) and 4 (test) again.
    for (t, i) in [1u32, 2, 3, 4, 5, 6, 2, 4].iter().enumerate() {
        b.push("a", *i, t as i64, None);
    }
    // Other users make items 2 and 4 popular, so negatives would pick them if allowed.
    for u in 0..30 {
        for (t, i) in [2u32, 4, 10 + u % 20].iter().enumerate() {
            b.push(&format!("u{u}"), *i, t as i64, None);
        }
    }
    let inter = b.build(&cat);
    let split = Split::leave_one_out(&inter);
    let a = inter.user_index("a").unwrap();
    assert_eq!(split.train(a), [1, 2, 3, 4, 5, 6]);
    let cfg = SftConfig {
        negatives: 25,
        ..config(0)
    };
    let sb = SftBuilder::new(&split, &inter, &cat, &m.prompts, &m.ranker, cfg, None).unwrap();
    assert_eq!(sb.sequence(a), [1, 3, 5, 6]);
    let examples = sb.user_examples(a, &Task::ALL, 0).unwrap();
    assert_eq!(examples.len(), 3 * 3, "positions 1, 2, 3 of [1, 3, 5, 6]");
    for ex in &examples {
        for field in [&ex.history, &ex.targets, &ex.candidates] {
            assert!(!field.contains(&2) && !field.contains(&4), "{ex:?}");
        }
        if ex.task != Task::Recommend {
            assert_eq!(ex.candidates.len(), ex.targets.len() + 25);
        }
    }
    // The score task cannot list more candidates than labels.
    let cfg = SftConfig {
        negatives: 26,
        ..config(0)
    };
    let sb = SftBuilder::new(&split, &inter, &cat, &m.prompts, &m.ranker, cfg, None).unwrap();
    let e = sft::write_jsonl(&sb, &Task::ALL, 0, &mut Vec::new(), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 25 negatives"), "{e}");
}

#[test]
fn cli_writes_chat_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("sft.jsonl");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_palr"))
            .arg("sft-data")
            .args(extra)
            .arg("--no-progress")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let out = run(&[
        "--tasks",
        "recommend_retrieval",
        "--max-examples-per-user",
        "2",
        "--negatives",
        "9",
        "--hard-negatives",
        "1",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("recommend_retrieval 1886"));
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(text.lines().count(), 943 * 2);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["task"], "recommend_retrieval");
    let user = first["messages"][1]["content"].as_str().unwrap();
    let listed = user
        .split("Candidate movies:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    assert_eq!(
        listed.lines().count(),
        12,
        "3 targets + 9 negatives: {listed}"
    );

    // Served lists, shuffled, from the last 6 training positions only (a retriever fitted
    // on what comes before them), items with their genres.
    let ranker_toml = dir.path().join("ranker.toml");
    std::fs::write(&ranker_toml, "item_line = \"{title} [{genres}]\"\n").unwrap();
    let out = run(&[
        "--tasks",
        "recommend_retrieval_score",
        "--candidate-order",
        "retriever-shuffled",
        "--tail",
        "6",
        "--hard-negative-retriever",
        "palr_retriever_markov",
        "--max-examples-per-user",
        "0",
        "--ranker-config",
        ranker_toml.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_path).unwrap();
    let mut per_user = std::collections::HashMap::<String, usize>::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *per_user
            .entry(v["user"].as_str().unwrap().into())
            .or_default() += 1;
        let user = v["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("A. ") && user.contains(" ["), "{user}");
    }
    let most = per_user.values().max().copied().unwrap_or(0);
    assert!(
        most <= 6 && text.lines().count() > 500,
        "{most}, {}",
        text.lines().count()
    );

    for (args, want) in [
        (vec!["--candidate-order", "random"], "retriever-shuffled"),
        (vec!["--tasks", "recommend,bogus"], "unknown task \"bogus\""),
        (vec!["--hard-negatives", "1.5"], "between 0 and 1"),
        (vec!["--hard-negative-retriever", "nosuchlib"], "not found"),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
