//! The LLM ranker: constrained generate mode can only name candidates, never twice;
//! score mode ranks every candidate in one pass; the shared-prefix KV reuse gives
//! the same numbers as a plain prompt; bad requests are clear errors.

mod common;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use palr::chat::ChatTemplate;
use palr::data::{Catalog, Item};
use palr::engine::{self, EngineError, LanguageModel, LoadOptions, Logits, Session};
use palr::model::LlamaConfig;
use palr::rank::{RankError, RankMode, RankRequest, Ranker, RankerConfig};
use palr::tokenizer::Tokenizer;

/// A model whose logits are pseudo-random (seeded per session), for adversarial checks
/// of the constraint: whatever the model prefers, the output must be valid.
struct RandomModel {
    cfg: LlamaConfig,
    seed: std::sync::atomic::AtomicU64,
}

struct RandomSession {
    vocab: usize,
    len: usize,
    cap: usize,
    rng: u64,
    out: Vec<f32>,
}

impl LanguageModel for RandomModel {
    fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    fn describe(&self) -> String {
        "random".into()
    }
    fn new_session(self: Arc<Self>, capacity: usize) -> Result<Box<dyn Session>, EngineError> {
        let seed = self.seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Box::new(RandomSession {
            vocab: self.cfg.vocab_size,
            len: 0,
            cap: capacity,
            rng: seed.wrapping_mul(0x9E3779B97F4A7C15) | 1,
            out: Vec::new(),
        }))
    }
}

impl Session for RandomSession {
    fn len(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        self.cap
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn truncate(&mut self, len: usize) -> Result<(), EngineError> {
        self.len = len;
        Ok(())
    }
    fn feed(&mut self, tokens: &[u32], want: Logits) -> Result<&[f32], EngineError> {
        if self.len + tokens.len() > self.cap {
            return Err(EngineError::ContextFull {
                needed: self.len + tokens.len(),
                capacity: self.cap,
            });
        }
        self.len += tokens.len();
        let rows = match want {
            Logits::None => 0,
            Logits::Last => 1,
            Logits::All => tokens.len(),
        };
        self.out.clear();
        for _ in 0..rows * self.vocab {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.out.push((self.rng % 10_000) as f32 / 500.0);
        }
        Ok(&self.out)
    }
    fn copy_prefix_from(&mut self, _other: &dyn Session, len: usize) -> Result<(), EngineError> {
        self.len = len;
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap())
}

fn chat() -> ChatTemplate {
    ChatTemplate::from_model_dir(&model_dir()).unwrap().unwrap()
}

/// Titles that share long prefixes, exact duplicates, and one that is a prefix of another.
fn tricky_catalog() -> Arc<Catalog> {
    let mut items = Vec::new();
    let titles = [
        "Star Wars (1977)",
        "Star Wars: Episode I - The Phantom Menace (1999)",
        "Star Wars: Episode II - Attack of the Clones (2002)",
        "Star Wars: Episode III - Revenge of the Sith (2005)",
        "Star Wars: Episode IV - A New Hope (1977)",
        "Star Wars: Episode IV - A New Hope (1977) Special Edition",
        "Star Wars: Episode V - The Empire Strikes Back (1980)",
        "Chasing Amy (1997)",
        "Chasing Amy (1997)",
        "Heat",
        "Heat (1995)",
        "Heat (1995) II",
        "Se7en (1995)",
        "Amélie (2001)",
        "千と千尋の神隠し (2001)",
        "Toy Story (1995)",
        "Toy Story 2 (1999)",
        "Toy Story 3 (2010)",
        "Godfather: Part II, The (1974)",
        "Godfather, The (1972)",
        "Godfather: Part III, The (1990)",
        "History A",
        "History B",
        "History C",
    ];
    for (i, t) in titles.iter().enumerate() {
        items.push(Item::new(format!("m{i}"), t));
    }
    Arc::new(Catalog::from_items(items).unwrap())
}

fn random_ranker(catalog: Arc<Catalog>) -> Ranker {
    random_ranker_with(catalog, RankerConfig::default(), 1)
}

/// A ranker over [`RandomModel`] whose sessions are seeded from `seed` on, with `cfg`.
fn random_ranker_with(catalog: Arc<Catalog>, cfg: RankerConfig, seed: u64) -> Ranker {
    let tok = tokenizer();
    let mut mcfg = LlamaConfig::from_dir(&model_dir()).unwrap();
    mcfg.vocab_size = tok.vocab_size();
    let model = Arc::new(RandomModel {
        cfg: mcfg,
        seed: seed.into(),
    });
    Ranker::new(model, tok, Some(&chat()), catalog, cfg).unwrap()
}

#[test]
fn constrained_generation_only_names_candidates_once() {
    let catalog = tricky_catalog();
    let ranker = random_ranker(catalog.clone());
    let history = [21u32, 22, 23];
    let candidates: Vec<u32> = (0..21).collect();
    for trial in 0..40 {
        let k = 1 + trial % 21;
        let out = ranker
            .rank(&RankRequest {
                history: &history,
                candidates: &candidates,
                k,
                mode: RankMode::Generate,
                adapter: None,
                deadline: None,
                cancel: None,
            })
            .unwrap();
        assert_eq!(out.items.len(), k, "trial {trial}: k items");
        let mut seen = std::collections::HashSet::new();
        let llm_k = k.min(RankerConfig::default().max_generated_items);
        for (pos, r) in out.items.iter().enumerate() {
            assert!(
                candidates.contains(&r.item),
                "trial {trial}: {} is not a candidate",
                r.item
            );
            assert!(seen.insert(r.item), "trial {trial}: {} named twice", r.item);
            assert_eq!(candidates[r.candidate_rank as usize], r.item);
            // The LLM writes up to max_generated_items; the rest follow in retriever order.
            assert_eq!(r.by_llm, pos < llm_k, "trial {trial}: position {pos}");
            if r.by_llm {
                assert!(
                    r.score.is_finite() && r.score <= 0.0,
                    "log-probabilities are <= 0"
                );
            }
        }
        assert!(out.timings.generated_tokens > 0);
        let tail: Vec<u32> = out.items[llm_k..]
            .iter()
            .map(|r| r.candidate_rank)
            .collect();
        assert!(
            tail.windows(2).all(|w| w[0] < w[1]),
            "tail keeps retriever order"
        );
    }
}

#[test]
fn score_mode_ranks_all_candidates_best_first() {
    let ranker = random_ranker(tricky_catalog());
    let candidates: Vec<u32> = (0..20).collect();
    let out = ranker
        .rank(&RankRequest {
            history: &[21, 22],
            candidates: &candidates,
            k: 20,
            mode: RankMode::Score,
            adapter: None,
            deadline: None,
            cancel: None,
        })
        .unwrap();
    assert_eq!(out.items.len(), 20);
    assert!(out.items.windows(2).all(|w| w[0].score >= w[1].score));
    let total: f64 = out.items.iter().map(|r| (r.score as f64).exp()).sum();
    assert!(
        (total - 1.0).abs() < 1e-4,
        "label distribution sums to {total}"
    );
    let mut items: Vec<u32> = out.items.iter().map(|r| r.item).collect();
    items.sort();
    assert_eq!(items, candidates);
}

#[test]
fn bad_requests_say_what_to_fix() {
    let ranker = random_ranker(tricky_catalog());
    let req = |history: &'static [u32], candidates: &'static [u32], k, mode| RankRequest {
        history,
        candidates,
        k,
        mode,
        adapter: None,
        deadline: None,
        cancel: None,
    };
    let cases: Vec<(RankRequest<'_>, &str)> = vec![
        (req(&[], &[1, 2], 2, RankMode::Generate), "history is empty"),
        (req(&[0], &[], 2, RankMode::Generate), "no candidates"),
        (req(&[0], &[1, 2], 0, RankMode::Generate), "k must be"),
        (
            req(&[0], &[1, 99], 2, RankMode::Generate),
            "outside the catalog",
        ),
        (req(&[0], &[1, 1], 2, RankMode::Generate), "twice"),
        (
            req(&[0], &[1, 0], 2, RankMode::Score),
            "is in the history: candidates must be items",
        ),
    ];
    for (r, want) in cases {
        let err = ranker.rank(&r).unwrap_err();
        assert!(matches!(err, RankError::Invalid(_)), "{err:?}");
        assert!(
            err.to_string().contains(want),
            "{err} should mention {want:?}"
        );
    }
    // More candidates than score-mode labels.
    let big = Arc::new(
        Catalog::from_items(
            (0..40)
                .map(|i| Item::new(format!("x{i}"), &format!("Film {i}")))
                .collect(),
        )
        .unwrap(),
    );
    let ranker = random_ranker(big);
    let cands: Vec<u32> = (1..40).collect();
    let err = ranker
        .rank(&RankRequest {
            history: &[0],
            candidates: &cands,
            k: 5,
            mode: RankMode::Score,
            adapter: None,
            deadline: None,
            cancel: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("at most 26"), "{err}");
    // A prompt over the limit.
    let tok = tokenizer();
    let cfg = RankerConfig {
        max_prompt_tokens: 60,
        ..RankerConfig::default()
    };
    let model = engine::load(&model_dir(), &LoadOptions::default()).unwrap();
    let ranker = Ranker::new(model, tok, Some(&chat()), tricky_catalog(), cfg).unwrap();
    let err = ranker
        .rank(&RankRequest {
            history: &[0, 1, 2],
            candidates: &[3, 4, 5, 6],
            k: 2,
            mode: RankMode::Generate,
            adapter: None,
            deadline: None,
            cancel: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("over the limit of 60"), "{err}");
}

#[test]
fn deadline_stops_work() {
    let ranker = random_ranker(tricky_catalog());
    let err = ranker
        .rank(&RankRequest {
            history: &[21],
            candidates: &[1, 2, 3],
            k: 3,
            mode: RankMode::Generate,
            adapter: None,
            deadline: Some(Instant::now() - Duration::from_millis(1)),
            cancel: None,
        })
        .unwrap_err();
    assert!(matches!(err, RankError::DeadlineExceeded(_)), "{err:?}");
    // A caller that went away stops the work too.
    let gone = std::sync::atomic::AtomicBool::new(true);
    let err = ranker
        .rank(&RankRequest {
            history: &[21],
            candidates: &[1, 2, 3],
            k: 3,
            mode: RankMode::Score,
            adapter: None,
            deadline: None,
            cancel: Some(&gone),
        })
        .unwrap_err();
    assert!(matches!(err, RankError::Cancelled(_)), "{err:?}");
}

/// Real model (with the LoRA fixture loaded unmerged): both modes give valid rankings,
/// and the prefix-cached score mode equals a plain full-prompt computation, with and
/// without the adapter (the prefix cache is per adapter).
#[test]
fn real_model_ranks_and_prefix_cache_is_exact() {
    let dir = model_dir();
    let opts = LoadOptions {
        adapters: vec![engine::AdapterSpec {
            name: "fx".into(),
            dir: repo().join("tests/fixtures/lora-peft"),
            merge: false,
        }],
        ..LoadOptions::default()
    };
    let model = engine::load(&dir, &opts).unwrap();
    let tok = tokenizer();
    let catalog = tricky_catalog();
    let ranker = Ranker::new(
        model.clone(),
        tok.clone(),
        Some(&chat()),
        catalog.clone(),
        RankerConfig::default(),
    )
    .unwrap();
    let history = [15u32, 0, 12];
    let candidates: Vec<u32> = vec![16, 17, 1, 4, 5, 6, 7, 8, 9, 10, 11, 13, 19, 20];
    let generated = ranker
        .rank(&RankRequest {
            history: &history,
            candidates: &candidates,
            k: 6,
            mode: RankMode::Generate,
            adapter: None,
            deadline: None,
            cancel: None,
        })
        .unwrap();
    assert_eq!(generated.items.len(), 6);
    let mut seen = std::collections::HashSet::new();
    assert!(
        generated
            .items
            .iter()
            .all(|r| candidates.contains(&r.item) && seen.insert(r.item))
    );
    assert!(
        generated.timings.cached_prompt_tokens > 0
            && generated.timings.prompt_tokens > generated.timings.cached_prompt_tokens
    );

    let prompt_cfg = RankerConfig::default().prompt;
    let builder = palr::rank::PromptBuilder::new(&prompt_cfg, &tok, Some(&chat())).unwrap();
    let hist: Vec<&str> = history.iter().map(|&i| catalog.title(i).unwrap()).collect();
    let cands: Vec<&str> = candidates
        .iter()
        .map(|&i| catalog.title(i).unwrap())
        .collect();
    let mut ids = builder.prefix(RankMode::Score).to_vec();
    ids.extend(
        tok.encode(
            &builder.suffix_text(RankMode::Score, &hist, None, &cands, candidates.len()),
            false,
        )
        .unwrap(),
    );
    let mut per_adapter = Vec::new();
    for name in [None, Some("fx"), None, Some("fx")] {
        let pinned = name.map(|n| ranker.adapter(n).unwrap().expect("unmerged"));
        let adapter = pinned.as_ref();
        let run = || {
            ranker
                .rank(&RankRequest {
                    history: &history,
                    candidates: &candidates,
                    k: candidates.len(),
                    mode: RankMode::Score,
                    adapter,
                    deadline: None,
                    cancel: None,
                })
                .unwrap()
        };
        let a = run();
        assert_eq!(
            a.items,
            run().items,
            "repeatable (pooled session, cached prefix)"
        );
        // The same prompt fed in one piece to a fresh session.
        let mut s = model.clone().new_session(ids.len()).unwrap();
        s.set_adapter(adapter).unwrap();
        let logits = s.feed(&ids, Logits::Last).unwrap();
        let labels = &builder.labels()[..candidates.len()];
        let raw: Vec<f64> = labels
            .iter()
            .map(|&(_, t)| logits[t as usize] as f64)
            .collect();
        let m = raw.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + raw.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        for r in &a.items {
            let want = raw[r.candidate_rank as usize] - lse;
            assert!(
                (r.score as f64 - want).abs() < 1e-3,
                "{adapter:?} item {}: {} vs {want}",
                r.item,
                r.score
            );
        }
        per_adapter.push(a.items);
    }
    assert_ne!(
        per_adapter[0], per_adapter[1],
        "the adapter changes the ranking scores"
    );
    let err = ranker.adapter("missing").unwrap_err();
    assert!(
        err.to_string().contains("unknown adapter \"missing\""),
        "{err}"
    );

    // Unloading the adapter: a request holding its pin still ranks as before (its prefix
    // computed for it alone), the ranker drops what it cached with it, and nothing keeps
    // the weights but the pins of requests.
    let fx = ranker.adapter("fx").unwrap().unwrap();
    let with_fx = |a: &palr::engine::AdapterRef| {
        ranker
            .rank(&RankRequest {
                history: &history,
                candidates: &candidates,
                k: candidates.len(),
                mode: RankMode::Score,
                adapter: Some(a),
                deadline: None,
                cancel: None,
            })
            .unwrap()
            .items
    };
    let cached = ranker.cached_prefixes();
    model.unload_adapter("fx").unwrap();
    ranker.forget_adapter(fx.generation());
    assert_eq!(
        ranker.cached_prefixes(),
        cached - 1,
        "fx's score prefix dropped"
    );
    assert_eq!(
        with_fx(&fx),
        per_adapter[1],
        "a pinned request ranks as before"
    );
    assert_eq!(
        ranker.cached_prefixes(),
        cached - 1,
        "and caches nothing for fx"
    );
    assert_eq!(fx.pins(), 1, "only the test's pin holds the weights");
    assert!(!ranker.has_adapter("fx"));
    // Loaded again: a new load, a new prefix, the same scores.
    let (again, _) = model
        .load_adapter("fx", &repo().join("tests/fixtures/lora-peft"), false)
        .unwrap();
    assert_eq!(with_fx(&again), per_adapter[1]);
    assert_eq!(ranker.cached_prefixes(), cached);
}

#[test]
fn prompt_is_the_chat_rendering_of_the_user_message() {
    let tok = tokenizer();
    let chat = chat();
    let cfg = RankerConfig::default().prompt;
    let b = palr::rank::PromptBuilder::new(&cfg, &tok, Some(&chat)).unwrap();
    let hist = ["Toy Story (1995)", "Heat (1995)"];
    let cands = ["Se7en (1995)", "Amélie (2001)", "Chasing Amy (1997)"];
    for mode in [RankMode::Generate, RankMode::Score] {
        let user = b.user_message(mode, &hist, &cands, 2);
        let want = chat
            .render(
                &[
                    palr::chat::Message::new("system", &cfg.system),
                    palr::chat::Message::new("user", &user),
                ],
                true,
            )
            .unwrap();
        let prefix = tok.decode(b.prefix(mode), false).unwrap();
        let got = format!("{prefix}{}", b.suffix_text(mode, &hist, None, &cands, 2));
        assert_eq!(got, want, "{mode:?}");
        assert!(got.ends_with("<|im_start|>assistant\n"));
        assert!(user.contains("Toy Story (1995)\nHeat (1995)\n"));
        match mode {
            RankMode::Score => {
                assert!(user.contains("A. Se7en (1995)\nB. Amélie (2001)\nC. Chasing Amy (1997)"))
            }
            RankMode::Generate => assert!(user.contains("Recommend the 2 candidate")),
        }
    }
    assert_eq!(b.answer(RankMode::Score, &[], 1).as_deref(), Some("B"));
    assert_eq!(
        b.answer(RankMode::Generate, &["X", "Y"], 0).as_deref(),
        Some("X\nY\n")
    );
}

#[test]
fn score_prior_weight_pulls_the_order_toward_the_retriever() {
    // The same random model (fixed seed per session: the first session of a fresh ranker)
    // with and without a strong retriever prior.
    let candidates: Vec<u32> = (0..20).collect();
    let rank = |weight: f32| {
        let cfg = RankerConfig {
            score_prior_weight: weight,
            ..RankerConfig::default()
        };
        random_ranker_with(tricky_catalog(), cfg, 7)
            .rank(&RankRequest {
                history: &[21, 22],
                candidates: &candidates,
                k: 20,
                mode: RankMode::Score,
                adapter: None,
                deadline: None,
                cancel: None,
            })
            .unwrap()
            .items
    };
    let plain = rank(0.0);
    let strong = rank(1000.0);
    // Without the prior the random logits scramble the order; with a dominant prior the
    // retriever's order comes back, and the scores are still a distribution.
    assert_ne!(
        plain.iter().map(|r| r.item).collect::<Vec<_>>(),
        candidates,
        "the random model should not reproduce the retriever's order by chance"
    );
    assert_eq!(
        strong.iter().map(|r| r.item).collect::<Vec<_>>(),
        candidates
    );
    let total: f64 = strong.iter().map(|r| (r.score as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{total}");
}

#[test]
fn user_profile_prompts_and_cache() {
    // The prompts: the profile instruction is the chat rendering of the history plus the
    // keyword question; a ranking prompt carries the profile line right after the history.
    let tok = tokenizer();
    let chat = chat();
    let pcfg = RankerConfig::default().prompt;
    let b = palr::rank::PromptBuilder::new(&pcfg, &tok, Some(&chat)).unwrap();
    let hist = ["Toy Story (1995)", "Heat (1995)"];
    let (prefix, rest) = b.profile_prompt(&hist);
    let text = format!("{}{rest}", tok.decode(prefix, false).unwrap());
    assert!(
        text.contains("Toy Story (1995)\nHeat (1995)\n\nDescribe this user's taste"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"));
    let with = b.suffix_text(
        RankMode::Score,
        &hist,
        Some("noir, crime"),
        &["Se7en (1995)"],
        1,
    );
    assert!(
        with.contains("Heat (1995)\n\nThe user's tastes: noir, crime\n\nCandidate movies:"),
        "{with}"
    );
    let without = b.suffix_text(RankMode::Score, &hist, None, &["Se7en (1995)"], 1);
    assert!(!without.contains("tastes"));
    // A profile line without its placeholder is a config error.
    let bad = palr::rank::PromptConfig {
        profile_line: "tastes".into(),
        ..pcfg.clone()
    };
    let e = palr::rank::PromptBuilder::new(&bad, &tok, Some(&chat)).unwrap_err();
    assert!(e.to_string().contains("{profile}"), "{e}");

    // The ranker: one profile per (history, adapter), reused; the prompt grows by the line.
    let ranker = |profile: bool| {
        let cfg = RankerConfig {
            user_profile: profile,
            profile_max_tokens: 6,
            ..RankerConfig::default()
        };
        random_ranker_with(tricky_catalog(), cfg, 3)
    };
    let candidates: Vec<u32> = (0..5).collect();
    let rank = |r: &Ranker, history: &[u32]| {
        r.rank(&RankRequest {
            history,
            candidates: &candidates,
            k: 5,
            mode: RankMode::Score,
            adapter: None,
            deadline: None,
            cancel: None,
        })
        .unwrap()
    };
    let on = ranker(true);
    let first = rank(&on, &[21, 22]);
    assert_eq!(on.cached_profiles(), 1);
    let again = rank(&on, &[21, 22]);
    assert_eq!(
        on.cached_profiles(),
        1,
        "the same history reuses its profile"
    );
    assert_eq!(first.timings.prompt_tokens, again.timings.prompt_tokens);
    rank(&on, &[23]);
    assert_eq!(on.cached_profiles(), 2);
    let off = ranker(false);
    let plain = rank(&off, &[21, 22]);
    assert_eq!(off.cached_profiles(), 0);
    assert!(
        first.timings.prompt_tokens > plain.timings.prompt_tokens,
        "{} vs {}",
        first.timings.prompt_tokens,
        plain.timings.prompt_tokens
    );
    // An expired deadline stops profile generation like any other stage.
    let e = on
        .rank(&RankRequest {
            history: &[20, 23],
            candidates: &candidates,
            k: 5,
            mode: RankMode::Score,
            adapter: None,
            deadline: Some(Instant::now()),
            cancel: None,
        })
        .unwrap_err();
    assert!(matches!(e, RankError::DeadlineExceeded("profile")), "{e}");
}

/// `ranking.item_line`: the ranker lists history and candidates with their year and genres
/// (the prompt is exactly the builder's text with those lines), generate mode still answers
/// with candidate titles, and a broken line is refused when the ranker is built.
#[test]
fn item_line_writes_year_and_genres_into_the_lists() {
    let films = [
        ("Heat", Some(1995), &["Action", "Crime", "Thriller"][..]),
        (
            "Toy Story",
            Some(1995),
            &["Animation", "Children's", "Comedy"][..],
        ),
        ("Se7en", Some(1995), &["Crime", "Thriller"][..]),
        ("Amélie", None, &["Comedy", "Romance"][..]),
        ("Chasing Amy", Some(1997), &[][..]),
        ("Star Wars", Some(1977), &["Action", "Sci-Fi"][..]),
    ];
    let items = films
        .iter()
        .enumerate()
        .map(|(i, (t, y, g))| {
            let mut it = Item::new(format!("m{i}"), t);
            it.year = *y;
            it.genres = g.iter().map(|s| s.to_string()).collect();
            it
        })
        .collect();
    let catalog = Arc::new(Catalog::from_items(items).unwrap());
    let cfg = RankerConfig {
        item_line: "{title} ({year}) [{genres}]".into(),
        ..RankerConfig::default()
    };
    assert_eq!(
        cfg.item_text(&catalog, 0),
        "Heat (1995) [Action, Crime, Thriller]"
    );
    assert_eq!(cfg.item_text(&catalog, 3), "Amélie [Comedy, Romance]");
    assert_eq!(cfg.item_text(&catalog, 4), "Chasing Amy (1997)");
    let ranker = random_ranker_with(catalog.clone(), cfg.clone(), 5);
    let plain = random_ranker_with(catalog.clone(), RankerConfig::default(), 5);
    let tok = tokenizer();
    let b = palr::rank::PromptBuilder::new(&cfg.prompt, &tok, Some(&chat())).unwrap();
    let history = [0u32, 1];
    let candidates = [2u32, 3, 4, 5];
    let lines = |items: &[u32]| -> Vec<String> {
        items.iter().map(|&i| cfg.item_text(&catalog, i)).collect()
    };
    let (h, c) = (lines(&history), lines(&candidates));
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let c: Vec<&str> = c.iter().map(String::as_str).collect();
    for (mode, k) in [(RankMode::Score, 4), (RankMode::Generate, 2)] {
        let req = RankRequest {
            history: &history,
            candidates: &candidates,
            k,
            mode,
            adapter: None,
            deadline: None,
            cancel: None,
        };
        let out = ranker.rank(&req).unwrap();
        let want = b.prefix(mode).len()
            + tok
                .encode(&b.suffix_text(mode, &h, None, &c, k), false)
                .unwrap()
                .len();
        assert_eq!(out.timings.prompt_tokens, want, "{mode:?}");
        assert!(
            out.timings.prompt_tokens > plain.rank(&req).unwrap().timings.prompt_tokens,
            "{mode:?}: the lines are longer than titles"
        );
        let mut named: Vec<u32> = out.items.iter().map(|r| r.item).collect();
        assert_eq!(named.len(), k);
        named.sort_unstable();
        named.dedup();
        assert_eq!(named.len(), k, "{mode:?}: no item twice");
        assert!(named.iter().all(|i| candidates.contains(i)));
        if mode == RankMode::Generate {
            assert!(out.items.iter().any(|r| r.by_llm), "titles can be written");
        }
    }
    let tok = tokenizer();
    let mut mcfg = LlamaConfig::from_dir(&model_dir()).unwrap();
    mcfg.vocab_size = tok.vocab_size();
    let model = Arc::new(RandomModel {
        cfg: mcfg,
        seed: 0.into(),
    });
    let bad = RankerConfig {
        item_line: "{title} ({rating})".into(),
        ..RankerConfig::default()
    };
    let e = match Ranker::new(model, tok, Some(&chat()), catalog, bad) {
        Ok(_) => panic!("an unknown placeholder must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("ranking.item_line") && e.contains("unknown placeholder"),
        "{e}"
    );
}

/// Settings that would make every request fail are refused when the ranker is built.
#[test]
fn configs_that_break_every_request_are_refused_at_start() {
    let catalog = tricky_catalog();
    let build = |cfg: RankerConfig| {
        let tok = tokenizer();
        let mut mcfg = LlamaConfig::from_dir(&model_dir()).unwrap();
        mcfg.vocab_size = tok.vocab_size();
        let model = Arc::new(RandomModel {
            cfg: mcfg,
            seed: 0.into(),
        });
        Ranker::new(model, tok, Some(&chat()), catalog.clone(), cfg)
            .err()
            .map(|e| e.to_string())
    };
    let e = build(RankerConfig {
        max_prompt_tokens: 20,
        ..RankerConfig::default()
    })
    .unwrap();
    assert!(
        e.contains("max_prompt_tokens = 20") && e.contains("fixed part"),
        "{e}"
    );
    let e = build(RankerConfig {
        session_pool: 0,
        ..RankerConfig::default()
    })
    .unwrap();
    assert!(e.contains("session_pool = 0"), "{e}");
    assert_eq!(build(RankerConfig::default()), None);
}
