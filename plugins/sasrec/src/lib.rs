//! SASRec retriever: a self-attentive sequential recommender (Kang & McAuley, ICDM 2018) — the
//! retriever PALR (Yang et al. 2023) puts in front of its LLM — served from weights trained by
//! `scripts/train_sasrec.py` on a view palr exported (`palr data export-view`).
//!
//! The model reads the history's last `max_len` items and scores every item by a dot product
//! with the shared item table ([`model`]); the top `k` not excluded come back. History items
//! the weights do not know (items added since they were trained) are skipped; catalogue items
//! they do not know are proposed only after every known item, in popularity order.
//!
//! Weights record the view they were fitted on (stage and fingerprint). `weights` may name one
//! file or a directory of them: the plugin takes the file fitted on exactly the view it is
//! given; when serving on all interactions (stage `all`) and none matches, the newest `all`
//! file (an older snapshot), reported through `describe`. On an evaluation view without a
//! matching file it refuses to start, naming what it found and the commands that train the
//! right weights. The host applies the same rule to what `describe` declares.
//!
//! Config (JSON): `{"weights": "PATH"}` (required: a `.safetensors` file or a directory of them,
//! relative to the working directory). See the README next to this crate.

mod model;

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use palr_retriever_sdk::abi::STAGE_ALL;
use palr_retriever_sdk::rank::{ItemRanking, backoff_score, interaction_counts, top_k};
use palr_retriever_sdk::{
    Candidates, Corpus, Description, Query, Retriever, TrainedOn, declare_retriever, parse_config,
};
use serde::Deserialize;

use model::{Header, SasRec};

/// JSON config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// A weights file, or a directory of them (one per view).
    weights: Option<PathBuf>,
}

/// The served model plus the mapping between its items and the catalogue's.
pub struct SasRecRetriever {
    model: SasRec,
    /// Catalogue index → model item, for history items (`None`: unknown to the weights).
    to_model: Vec<Option<u32>>,
    /// Model item → catalogue index (`None`: no longer in the catalogue).
    to_catalog: Vec<Option<u32>>,
    /// Catalogue items in popularity order, for what the model cannot score.
    popularity: ItemRanking,
    path: PathBuf,
    note: String,
}

/// The commands that make weights for `stage`.
fn train_hint(stage: &str) -> String {
    format!(
        "train weights for this view: `palr data export-view --stage {stage} --out view.json` \
         then `scripts/train_sasrec.py --view view.json --out weights/{stage}.safetensors ...` \
         (plugins/sasrec/README.md)"
    )
}

/// Picks the weights file for the view `(stage, fingerprint)` from `path` (a file or a
/// directory). Returns the file, its header, and whether it is a stale snapshot.
fn choose(path: &Path, stage: &str, fingerprint: &str) -> Result<(PathBuf, Header, bool), String> {
    let candidates: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("weights directory {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "weights directory {} holds no .safetensors file; {}",
                path.display(),
                train_hint(stage)
            ));
        }
        files
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(format!(
            "weights {} does not exist (a .safetensors file or a directory of them; relative \
             paths start at the server's working directory)",
            path.display()
        ));
    };
    let headers = candidates
        .iter()
        .map(|p| Header::read(p).map(|h| (p.clone(), h)))
        .collect::<Result<Vec<_>, String>>()?;
    if let Some((p, h)) = headers.iter().find(|(_, h)| h.fingerprint == fingerprint) {
        return Ok((p.clone(), h.clone(), false));
    }
    let found = headers
        .iter()
        .map(|(p, h)| {
            format!(
                "{} (stage {}, view {})",
                p.display(),
                h.stage,
                &h.fingerprint[..h.fingerprint.len().min(12)]
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    if stage == STAGE_ALL {
        // Serving: the newest snapshot of all interactions stands in, reported.
        let created = |h: &Header| {
            h.trained
                .get("created_utc")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_owned()
        };
        if let Some((p, h)) = headers
            .iter()
            .filter(|(_, h)| h.stage == STAGE_ALL)
            .max_by_key(|(p, h)| (created(h), p.clone()))
        {
            return Ok((p.clone(), h.clone(), true));
        }
        return Err(format!(
            "no weights trained on all interactions (stage all) among: {found}; {}",
            train_hint(stage)
        ));
    }
    Err(format!(
        "no weights fitted on this view (stage {stage}, view {}) among: {found}. Weights fitted \
         on another view may have seen this evaluation's targets; {}",
        &fingerprint[..fingerprint.len().min(12)],
        train_hint(if stage.is_empty() { "STAGE" } else { stage })
    ))
}

impl Retriever for SasRecRetriever {
    const NAME: &'static CStr = c"sasrec";
    const DESCRIPTION: &'static CStr =
        c"SASRec: self-attention over the history's last items, scores = item table dot products";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        let weights = c.weights.ok_or(
            "config needs \"weights\": a .safetensors file or a directory of them \
             (plugins/sasrec/weights/ml100k holds MovieLens-100k's)",
        )?;
        let items = corpus.item_data().ok_or(
            "the host sent no item ids (ABI 2 hosts do): the weights' items cannot be matched \
             to the catalogue",
        )?;
        let (path, header, stale) = choose(&weights, corpus.stage(), corpus.fingerprint())?;
        let model = SasRec::load(&path)?;
        debug_assert_eq!(model.header.fingerprint, header.fingerprint);
        let by_id = model.index_by_id();
        let mut to_model = vec![None; corpus.n_items() as usize];
        let mut to_catalog = vec![None; model.n_items()];
        for item in items.iter() {
            if let Some(&m) = by_id.get(item.id()) {
                to_model[item.index() as usize] = Some(m);
                to_catalog[m as usize] = Some(item.index());
            }
        }
        let known = to_catalog.iter().filter(|c| c.is_some()).count();
        if known == 0 {
            return Err(format!(
                "none of the {} items of {} is in the catalogue: weights for another data set?",
                model.n_items(),
                path.display()
            ));
        }
        let mut note = format!(
            "{} (stage {}, {} of {} catalogue items known)",
            path.display(),
            header.stage,
            known,
            corpus.n_items()
        );
        if stale {
            note.push_str(
                "; an older snapshot of all interactions: newer interactions reach it only \
                 through the requests' histories",
            );
        }
        Ok(Self {
            model,
            to_model,
            to_catalog,
            popularity: ItemRanking::from_weights(&interaction_counts(corpus)),
            path,
            note,
        })
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        let known: Vec<u32> = query
            .history()
            .iter()
            .filter_map(|&i| self.to_model.get(i as usize).copied().flatten())
            .collect();
        let recent = &known[known.len().saturating_sub(self.model.max_len())..];
        if !recent.is_empty() {
            let scores = self.model.scores(&self.model.encode(recent));
            let scored = scores
                .iter()
                .zip(&self.to_catalog)
                .filter_map(|(&s, c)| c.map(|c| (c, s)));
            for (item, score) in top_k(scored, out.capacity(), query) {
                out.push(item, score);
            }
        }
        // Items the model cannot score (or an empty history): popularity, below every score.
        let floor = out.written().last().map_or(0.0, |c| c.score) - 1.0;
        let max = self.popularity.max_score();
        self.popularity
            .fill(query, out, |w| floor + backoff_score(w, max));
        Ok(())
    }

    fn describe(&self) -> Description {
        Description {
            trained_on: Some(TrainedOn {
                stage: self.model.header.stage.clone(),
                fingerprint: self.model.header.fingerprint.clone(),
            }),
            note: Some(self.note.clone()),
        }
    }
}

impl SasRecRetriever {
    /// The weights file in use.
    pub fn weights_path(&self) -> &Path {
        &self.path
    }
}

declare_retriever!(SasRecRetriever);

#[cfg(test)]
mod tests {
    use super::*;
    use palr_retriever_sdk::{ItemFields, ItemTable, run_query};

    const OFFSETS: [u64; 4] = [0, 3, 5, 6];
    const ITEMS: [u32; 6] = [0, 1, 2, 2, 3, 1];

    fn table(ids: &[&str]) -> ItemTable {
        ItemTable::new(
            ids.iter()
                .map(|id| ItemFields {
                    id: (*id).into(),
                    title: format!("t{id}"),
                    ..Default::default()
                })
                .collect(),
        )
        .unwrap()
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("sasrec-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn config(path: &Path) -> String {
        serde_json::json!({ "weights": path }).to_string()
    }

    #[test]
    fn picks_the_file_of_the_view_and_maps_ids() {
        let dir = tempdir("pick");
        let ids = ["a", "b", "c", "d", "e"];
        let fp_valid = "1".repeat(64);
        model::tests::write_model(
            &dir.0.join("valid.safetensors"),
            &ids,
            "valid",
            &fp_valid,
            1,
        );
        model::tests::write_model(
            &dir.0.join("test.safetensors"),
            &ids,
            "test",
            &"2".repeat(64),
            2,
        );
        let t = table(&ids);
        let corpus = Corpus::new(5, &OFFSETS, &ITEMS, None)
            .unwrap()
            .with_items(t.as_ref())
            .unwrap()
            .with_view("valid", &fp_valid);
        let r = SasRecRetriever::new(&config(&dir.0), &corpus).unwrap();
        assert!(r.weights_path().ends_with("valid.safetensors"));
        let d = r.describe();
        assert_eq!(d.trained_on.unwrap().fingerprint, fp_valid);
        // Ranking = the model's scores over non-history items.
        let history = [0u32, 2];
        let got = run_query(&r, &Query::new(&history, &[]), 3).unwrap();
        let scores = r.model.scores(&r.model.encode(&history));
        let mut want: Vec<(u32, f32)> = [1u32, 3, 4]
            .iter()
            .map(|&i| (i, scores[i as usize]))
            .collect();
        want.sort_by(palr_retriever_sdk::rank::rank_order);
        assert_eq!(got, want);
    }

    #[test]
    fn catalogue_order_and_new_items_are_handled_by_id() {
        let dir = tempdir("ids");
        let fp = "3".repeat(64);
        let path = dir.0.join("all.safetensors");
        // The weights know a, b, c; the catalogue lists c, x (new), a, b in another order.
        model::tests::write_model(&path, &["a", "b", "c"], "all", &fp, 3);
        let t = table(&["c", "x", "a", "b"]);
        let offsets = [0u64, 2, 3];
        let items = [2u32, 3, 1];
        let served = "9".repeat(64);
        let corpus = Corpus::new(4, &offsets, &items, None)
            .unwrap()
            .with_items(t.as_ref())
            .unwrap()
            .with_view("all", &served);
        let r = SasRecRetriever::new(&config(&path), &corpus).unwrap();
        assert!(
            r.note.contains("3 of 4 catalogue items known"),
            "{}",
            r.note
        );
        // History [a] (catalogue 2) = model [0]; candidates b (3) and c (0) by model score,
        // then the new item x (1) by popularity, below both.
        let got = run_query(&r, &Query::new(&[2], &[]), 3).unwrap();
        let s = r.model.scores(&r.model.encode(&[0]));
        let mut want = [(3u32, s[1]), (0u32, s[2])];
        want.sort_by(palr_retriever_sdk::rank::rank_order);
        assert_eq!(&got[..2], &want[..]);
        assert_eq!(got[2].0, 1);
        assert!(got[2].1 < got[1].1);
        // An empty history or only unknown items: popularity alone.
        let got = run_query(&r, &Query::new(&[1], &[]), 2).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|&(i, _)| i != 1));
    }

    #[test]
    fn evaluation_views_refuse_other_weights_serving_takes_the_newest_snapshot() {
        let dir = tempdir("leak");
        let ids = ["a", "b", "c", "d", "e"];
        model::tests::write_model(
            &dir.0.join("test.safetensors"),
            &ids,
            "test",
            &"2".repeat(64),
            2,
        );
        model::tests::write_model(
            &dir.0.join("all-old.safetensors"),
            &ids,
            "all",
            &"4".repeat(64),
            1,
        );
        model::tests::write_model(
            &dir.0.join("all-new.safetensors"),
            &ids,
            "all",
            &"5".repeat(64),
            5,
        );
        let t = table(&ids);
        let corpus = |stage: &'static str| {
            Corpus::new(5, &OFFSETS, &ITEMS, None)
                .unwrap()
                .with_items(t.as_ref())
                .unwrap()
                .with_view(
                    stage,
                    "f00d000000000000000000000000000000000000000000000000000000000000",
                )
        };
        let e = SasRecRetriever::new(&config(&dir.0), &corpus("valid"))
            .err()
            .unwrap();
        assert!(
            e.contains("no weights fitted on this view (stage valid, view f00d00000000)")
                && e.contains("test.safetensors (stage test, view 222222222222)")
                && e.contains("palr data export-view --stage valid"),
            "{e}"
        );
        let r = SasRecRetriever::new(&config(&dir.0), &corpus("all")).unwrap();
        assert!(r.weights_path().ends_with("all-new.safetensors"));
        assert!(r.note.contains("older snapshot"), "{}", r.note);
        // One file given directly: it is used, and `describe` says what it was fitted on, so
        // the host applies the leak rule.
        let one = dir.0.join("test.safetensors");
        let e = SasRecRetriever::new(&config(&one), &corpus("valid"))
            .err()
            .unwrap();
        assert!(e.contains("no weights fitted on this view"), "{e}");
        let e = SasRecRetriever::new("{}", &corpus("valid")).err().unwrap();
        assert!(e.contains("config needs \"weights\""), "{e}");
        let e = SasRecRetriever::new(&config(&dir.0.join("nope")), &corpus("all"))
            .err()
            .unwrap();
        assert!(e.contains("does not exist"), "{e}");
        let plain = Corpus::new(5, &OFFSETS, &ITEMS, None).unwrap();
        let e = SasRecRetriever::new(&config(&dir.0), &plain).err().unwrap();
        assert!(e.contains("no item ids"), "{e}");
    }
}
