//! `palr eval` with the real LLM on a handful of MovieLens-100k users: the LLM only reorders
//! the retriever's top candidates, the report's ranks are what the ranker says, and the stage
//! times are filled in.
//!
//! Needs the default model (`palr model fetch`), `palr data fetch ml-100k` and the plugins.

mod common;

use std::sync::Arc;

use common::model_dir;
use palr::chat::ChatTemplate;
use palr::data::{Dataset, LoadOptions, Split, Stage};
use palr::engine::{self, LoadOptions as EngineOptions};
use palr::eval::{self, Backend, EvalOptions, LocalBackend, Method, metrics};
use palr::rank::{RankMode, RankRequest, Ranker, RankerConfig};
use palr::retrieval::RetrieverSpec;
use palr::tokenizer::Tokenizer;

const CANDIDATES: usize = 5;

#[test]
fn llm_methods_rerank_only_the_candidates() {
    let dir = palr::data::default_data_dir().join("ml-100k");
    let ds = Dataset::load(&dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}: run `palr data fetch ml-100k` first"));
    let split = Split::leave_one_out(&ds.interactions);
    let catalog = Arc::new(ds.catalog.clone());
    let model = engine::load(&model_dir(), &EngineOptions::default()).unwrap();
    let tok = Arc::new(Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap());
    let chat = ChatTemplate::from_model_dir(&model_dir()).unwrap();
    let ranker = Arc::new(
        Ranker::new(
            model,
            tok,
            chat.as_ref(),
            catalog.clone(),
            RankerConfig::default(),
        )
        .unwrap(),
    );
    let specs = [RetrieverSpec::new("markov", "palr_retriever_markov", "{}")];
    let backend = LocalBackend::load(&split, &ds.interactions, &ds.catalog, Stage::Test, &specs)
        .unwrap()
        .with_ranker(None, ranker.clone());
    // A sample with a target among the candidates and one below them, found with the
    // retriever alone (milliseconds), so both cases below are exercised.
    let mut opts = EvalOptions {
        stage: Stage::Test,
        methods: Method::parse_list("markov").unwrap(),
        candidates: CANDIDATES,
        users: Some(3),
        seed: 0,
        per_user: true,
    };
    let covers_both = |seed: u64, opts: &mut EvalOptions| {
        opts.seed = seed;
        let r = eval::evaluate(
            &backend,
            &split,
            &ds.catalog,
            &ds.interactions,
            opts,
            &mut |_, _| {},
        )
        .unwrap();
        let ranks: Vec<Option<usize>> = r
            .per_user
            .unwrap()
            .iter()
            .map(|u| u.ranks["markov"])
            .collect();
        ranks.iter().any(|r| r.is_some_and(|r| r <= CANDIDATES))
            && ranks.iter().any(|r| r.is_some_and(|r| r > CANDIDATES))
    };
    let seed = (0..200)
        .find(|&s| covers_both(s, &mut opts))
        .expect("some 3-user sample has both cases");
    opts.seed = seed;
    opts.methods = Method::parse_list("markov,markov+score,markov+generate").unwrap();
    let rep = eval::evaluate(
        &backend,
        &split,
        &ds.catalog,
        &ds.interactions,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    eprintln!("{}", rep.markdown());
    assert_eq!(rep.users, 3);
    let [alone, score, generate] = &rep.methods[..] else {
        panic!("three methods")
    };

    // Per user: a target beyond the candidates keeps its retriever rank; one among them stays
    // among them.
    for u in rep.per_user.as_ref().unwrap() {
        let r = u.ranks["markov"];
        for m in ["markov+score", "markov+generate"] {
            let l = u.ranks[m];
            match r {
                Some(r) if r <= CANDIDATES => {
                    assert!(
                        l.is_some_and(|l| l <= CANDIDATES),
                        "user {}: {m} {l:?}",
                        u.user
                    )
                }
                _ => assert_eq!(l, r, "user {}: {m}", u.user),
            }
        }
    }
    // So cut-offs at or beyond the candidate count, and recall, are the retriever's.
    for m in [score, generate] {
        assert_eq!(m.metrics.hr_10, alone.metrics.hr_10, "{}", m.method);
        assert_eq!(m.metrics.hr_20, alone.metrics.hr_20, "{}", m.method);
        assert_eq!(m.metrics.recall_100, alone.metrics.recall_100);
        assert!(m.times.prefill_s > 0.0 && m.times.rank_s >= m.times.prefill_s);
        assert!(m.times.cached_prompt_tokens > 0);
        assert!(m.times.prompt_tokens > m.times.cached_prompt_tokens);
        assert!(m.seconds_per_user > 0.0);
    }
    assert_eq!(score.times.generated_tokens, 0);
    assert!(generate.times.generated_tokens > 0 && generate.times.decode_s > 0.0);

    // The report's rank is the ranker's: redo by hand the user whose target was a candidate.
    let first = rep
        .per_user
        .as_ref()
        .unwrap()
        .iter()
        .find(|u| u.ranks["markov"].is_some_and(|r| r <= CANDIDATES))
        .unwrap();
    let u = ds.interactions.user_index(&first.user).unwrap();
    let ex = split.test(u).unwrap();
    let retrieved = backend.retrieve("markov", ex.history, 100).unwrap();
    let out = ranker
        .rank(&RankRequest {
            history: ex.history,
            candidates: &retrieved[..CANDIDATES],
            k: CANDIDATES,
            mode: RankMode::Score,
            adapter: None,
            deadline: None,
            cancel: None,
        })
        .unwrap();
    let order: Vec<u32> = out.items.iter().map(|r| r.item).collect();
    let list = eval::merge_llm_order(&retrieved, CANDIDATES, &order).unwrap();
    assert_eq!(
        metrics::rank_of(&list, ex.target),
        first.ranks["markov+score"]
    );
}

/// `palr eval` with a LoRA adapter loaded in process (the PEFT fixture): the adapted
/// method runs and is reported under its own name.
#[test]
fn eval_cli_runs_an_adapter_method() {
    let fixture = common::repo().join("tests/fixtures/lora-peft");
    let report =
        std::env::temp_dir().join(format!("palr-eval-adapter-{}.json", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palr"))
        .args([
            "eval",
            "--methods",
            "markov+score,markov+score@fx",
            "--users",
            "2",
            "--no-progress",
        ])
        .args(["--adapter", &format!("fx={}", fixture.display())])
        .args(["--candidates", "5", "--out", report.to_str().unwrap()])
        .args(["--model", model_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("markov+score@fx"), "{text}");
    let _ = std::fs::remove_file(report);
}
