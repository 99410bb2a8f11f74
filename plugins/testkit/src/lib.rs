//! TEST ONLY. A retriever plugin built with the SDK whose behaviour is chosen by its JSON
//! config, so the host's tests can exercise every failure path through a real dynamic library.
//! Never configure it in a real deployment.
//!
//! Config: `{"misbehave": MODE, "expect_users": n, "expect_interactions": n,
//! "expect_timestamps": bool}`; the `expect_*` checks fail init if the host's view differs.
//! Modes: `none` (default: items in index order, skipping excluded, scores `-index`),
//! `error_init`, `panic_init`, `error_retrieve`, `panic_retrieve`, `panic_drop`,
//! `out_of_range` (proposes `n_items`), `duplicates`, `history` (proposes a history item),
//! `excluded` (proposes an excluded non-history item), `nan`, `infinite` (bad scores),
//! `unsorted` (increasing scores), `context` (first proposes item `len(user id) % n_items`
//! scored with the last history timestamp, or -1 without timestamps, and scores the rest
//! below it). `"sleep_ms": n` makes every retrieve call sleep first (a
//! slow or hung plugin). `"trained_on": {"stage": S, "fingerprint": F}` makes `describe`
//! declare pre-trained state fitted on that view (`"fingerprint": "view"` = the view it was
//! given). `describe`'s note echoes what the SDK read: the view's stage and fingerprint, the
//! first user's id and the first item's id, title, year and genres.

use std::ffi::CStr;

use palr_retriever_sdk::{
    Candidates, Corpus, Description, Query, Retriever, TrainedOn, declare_retriever, parse_config,
};
use serde::Deserialize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    None,
    ErrorInit,
    PanicInit,
    ErrorRetrieve,
    PanicRetrieve,
    PanicDrop,
    OutOfRange,
    Duplicates,
    History,
    Excluded,
    Nan,
    Infinite,
    Unsorted,
    Context,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    misbehave: Mode,
    expect_users: Option<usize>,
    expect_interactions: Option<usize>,
    expect_timestamps: Option<bool>,
    sleep_ms: u64,
    trained_on: Option<ViewConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewConfig {
    stage: String,
    fingerprint: String,
}

/// The configurable misbehaving retriever.
pub struct Testkit {
    mode: Mode,
    n_items: u32,
    sleep_ms: u64,
    trained_on: Option<TrainedOn>,
    echo: String,
}

impl Drop for Testkit {
    fn drop(&mut self) {
        if self.mode == Mode::PanicDrop {
            panic!("testkit: panic_drop requested");
        }
    }
}

impl Retriever for Testkit {
    const NAME: &'static CStr = c"testkit";
    const DESCRIPTION: &'static CStr = c"TEST ONLY: misbehaves as configured";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        let check = |what: &str, want: Option<usize>, got: usize| match want {
            Some(w) if w != got => Err(format!("expected {w} {what}, the host passed {got}")),
            _ => Ok(()),
        };
        check("users", c.expect_users, corpus.n_users())?;
        check(
            "interactions",
            c.expect_interactions,
            corpus.n_interactions(),
        )?;
        if let Some(t) = c.expect_timestamps
            && t != corpus.timestamps().is_some()
        {
            return Err(format!("expected timestamps: {t}"));
        }
        match c.misbehave {
            Mode::ErrorInit => Err("testkit: error_init requested".into()),
            Mode::PanicInit => panic!("testkit: panic_init requested"),
            mode => Ok(Self {
                mode,
                n_items: corpus.n_items(),
                sleep_ms: c.sleep_ms,
                trained_on: c.trained_on.map(|v| TrainedOn {
                    fingerprint: match v.fingerprint.as_str() {
                        "view" => corpus.fingerprint().to_owned(),
                        _ => v.fingerprint,
                    },
                    stage: v.stage,
                }),
                echo: match corpus.item(0) {
                    Some(it) => format!(
                        "stage={} fingerprint={} user0={} item0={}|{}|{:?}|{}",
                        corpus.stage(),
                        corpus.fingerprint(),
                        corpus.user_id(0).unwrap_or("-"),
                        it.id(),
                        it.title(),
                        it.year(),
                        it.genres().collect::<Vec<_>>().join(",")
                    ),
                    None => format!("stage={} no item data", corpus.stage()),
                },
            }),
        }
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        if self.sleep_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.sleep_ms));
        }
        let first_allowed = (0..self.n_items).find(|&i| !query.is_excluded(i));
        match self.mode {
            Mode::ErrorRetrieve => return Err("testkit: error_retrieve requested".into()),
            Mode::PanicRetrieve => panic!("testkit: panic_retrieve requested"),
            Mode::OutOfRange => {
                out.push(self.n_items, 1.0);
            }
            Mode::Duplicates => {
                if let Some(i) = first_allowed {
                    out.push(i, 1.0);
                    out.push(i, 1.0);
                }
            }
            Mode::History => {
                if let Some(&h) = query.history().first() {
                    out.push(h, 1.0);
                }
            }
            Mode::Excluded => {
                if let Some(&e) = query
                    .exclude()
                    .iter()
                    .find(|e| !query.history().contains(e))
                {
                    out.push(e, 1.0);
                }
            }
            Mode::Context => {
                let item = query.user_id().len() as u32 % self.n_items;
                let ts = query.history_timestamps().and_then(|t| t.last().copied());
                let score = ts.unwrap_or(-1) as f32;
                if !query.is_excluded(item) {
                    out.push(item, score);
                }
                for i in (0..self.n_items).filter(|&i| !query.is_excluded(i) && i != item) {
                    if !out.push(i, score - 1.0 - i as f32) {
                        break;
                    }
                }
                return Ok(());
            }
            Mode::Nan | Mode::Infinite => {
                if let Some(i) = first_allowed {
                    out.push(
                        i,
                        if self.mode == Mode::Nan {
                            f32::NAN
                        } else {
                            f32::INFINITY
                        },
                    );
                }
            }
            _ => {}
        }
        let unsorted = self.mode == Mode::Unsorted;
        for i in (0..self.n_items).filter(|&i| !query.is_excluded(i)) {
            if out.is_full() {
                break;
            }
            if !out.contains(i) {
                out.push(i, if unsorted { i as f32 } else { -(i as f32) });
            }
        }
        Ok(())
    }

    fn describe(&self) -> Description {
        Description {
            trained_on: self.trained_on.clone(),
            note: Some(self.echo.clone()),
        }
    }
}

declare_retriever!(Testkit);
