//! `palr eval --addr`: the gRPC client path against a stand-in `palr.v1.Recommender` server
//! (real retriever plugins; its "LLM" reverses the candidates, or keeps them for adapter
//! `same`). The remote evaluation must give exactly the in-process numbers of the same
//! behaviour, pass adapters through, and turn server mistakes into clear errors.
//!
//! Needs `palr data fetch ml-100k` and the plugins (`cargo build --release --workspace`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palr::data::{Catalog, Dataset, LoadOptions, Split, Stage};
use palr::eval::remote::RemoteBackend;
use palr::eval::{
    self, Backend, EvalOptions, LlmRanking, LocalBackend, Method, Report, Result as EvalResult,
    ViewStage,
};
use palr::proto::v1 as pb;
use palr::proto::v1::recommender_server::{Recommender, RecommenderServer};
use palr::rank::{RankMode, RankTimings};
use palr::retrieval::{RetrieverRegistry, RetrieverSpec};
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Retrieve puts a history item first.
    HistoryItem,
    /// Rank names an item that was not a candidate.
    Stranger,
    /// GetModelInfo reports another catalog size.
    OtherCatalog,
}

struct Mock {
    catalog: Arc<Catalog>,
    registry: RetrieverRegistry,
    fault: Fault,
}

impl Mock {
    fn index(&self, id: &str) -> Result<u32, Status> {
        self.catalog
            .index_of(id)
            .ok_or_else(|| Status::invalid_argument(format!("unknown item {id}")))
    }
    fn item(&self, i: u32, score: f32) -> pb::ScoredItem {
        pb::ScoredItem {
            item_id: self.catalog.id(i).unwrap().into(),
            title: String::new(),
            score,
        }
    }
}

#[tonic::async_trait]
impl Recommender for Mock {
    async fn recommend(
        &self,
        _: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        Err(Status::unimplemented("not used by eval"))
    }

    async fn rank(
        &self,
        req: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let r = req.into_inner();
        assert_eq!(
            r.k as usize,
            r.candidates.len(),
            "eval asks for every candidate"
        );
        assert!(!r.history.is_empty());
        let mut ids = r.candidates.clone();
        if r.adapter != "same" {
            ids.reverse();
        }
        if self.fault == Fault::Stranger {
            ids[0] = self.catalog.id(self.index(&r.history[0])?).unwrap().into();
        }
        let items = ids
            .into_iter()
            .map(|id| pb::RankedItem {
                item_id: id,
                ranked_by_llm: true,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::RecommendResponse {
            items,
            timings: Some(pb::StageTimings {
                prefill_ms: 2.0,
                decode_ms: if r.rank_mode == pb::RankMode::Generate as i32 {
                    3.0
                } else {
                    0.0
                },
                prompt_tokens: 10,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn retrieve(
        &self,
        req: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        let r = req.into_inner();
        let history = r
            .history
            .iter()
            .map(|id| self.index(id))
            .collect::<Result<Vec<_>, _>>()?;
        let got = self
            .registry
            .retrieve(&r.retriever, &history, r.num_candidates as usize, &[])
            .map_err(|e| Status::not_found(e.to_string()))?;
        let mut items: Vec<pb::ScoredItem> = got.iter().map(|&(i, s)| self.item(i, s)).collect();
        if self.fault == Fault::HistoryItem {
            items[0] = self.item(history[0], 0.0);
        }
        Ok(Response::new(pb::RetrieveResponse {
            items,
            retriever: r.retriever,
            timings: None,
        }))
    }

    async fn list_retrievers(
        &self,
        _: Request<pb::ListRetrieversRequest>,
    ) -> Result<Response<pb::ListRetrieversResponse>, Status> {
        let retrievers = self
            .registry
            .names()
            .into_iter()
            .map(|name| pb::RetrieverInfo {
                name,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ListRetrieversResponse { retrievers }))
    }

    async fn get_model_info(
        &self,
        _: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let n = self.catalog.len() as u32;
        Ok(Response::new(pb::ModelInfo {
            model_name: "mock".into(),
            catalog_items: if self.fault == Fault::OtherCatalog {
                n - 1
            } else {
                n
            },
            max_num_candidates: 200,
            max_k: 50,
            adapters: vec!["same".into()],
            training_view_stage: self.registry.view().stage().into(),
            training_view_fingerprint: self.registry.view().fingerprint().into(),
            ..Default::default()
        }))
    }
}

/// Starts a server on a free loopback port; it lives until the test process ends.
fn serve(mock: Mock) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(RecommenderServer::new(mock))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The same behaviour in process: the local retrievers, candidates reversed (kept for `same`).
struct Reverse(LocalBackend);

impl Backend for Reverse {
    fn describe(&self) -> String {
        "reverse".into()
    }
    fn training_view(&self) -> Option<(String, String)> {
        self.0.training_view()
    }
    fn check(&self, _: &[Method], _: usize, _: usize) -> EvalResult<()> {
        Ok(())
    }
    fn retrieve(&self, r: &str, history: &[u32], n: usize) -> EvalResult<Vec<u32>> {
        self.0.retrieve(r, history, n)
    }
    fn rank(
        &self,
        _: RankMode,
        adapter: Option<&str>,
        _: &[u32],
        candidates: &[u32],
    ) -> EvalResult<LlmRanking> {
        let mut order = candidates.to_vec();
        if adapter != Some("same") {
            order.reverse();
        }
        Ok(LlmRanking {
            order,
            scores: Vec::new(),
            timings: RankTimings::default(),
        })
    }
}

struct Setup {
    ds: Dataset,
    split: Split,
    specs: Vec<RetrieverSpec>,
}

fn setup() -> Setup {
    let dir = palr::data::default_data_dir().join("ml-100k");
    let ds = Dataset::load(&dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}: run `palr data fetch ml-100k` first"));
    let split = Split::leave_one_out(&ds.interactions);
    let specs = vec![
        RetrieverSpec::new("popularity", "palr_retriever_popularity", "{}"),
        RetrieverSpec::new("markov", "palr_retriever_markov", "{}"),
    ];
    Setup { ds, split, specs }
}

impl Setup {
    /// A server whose retrievers are built, as they must be, on the test split's view.
    fn server(&self, fault: Fault) -> SocketAddr {
        self.server_on(fault, ViewStage::Test)
    }

    /// A server whose retrievers learn from `view`.
    fn server_on(&self, fault: Fault, view: ViewStage) -> SocketAddr {
        let view = eval::training_view(&self.split, &self.ds.interactions, &self.ds.catalog, view)
            .unwrap();
        let registry = RetrieverRegistry::new(Arc::new(view));
        registry.load_all(&self.specs).unwrap();
        serve(Mock {
            catalog: Arc::new(self.ds.catalog.clone()),
            registry,
            fault,
        })
    }

    fn connect(&self, addr: SocketAddr) -> RemoteBackend {
        RemoteBackend::connect(
            &addr.to_string(),
            &Default::default(),
            Arc::new(self.ds.catalog.clone()),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    fn eval(&self, backend: &dyn Backend, methods: &str) -> EvalResult<Report> {
        let opts = EvalOptions {
            stage: Stage::Test,
            methods: Method::parse_list(methods)?,
            candidates: 20,
            users: Some(40),
            seed: 5,
            per_user: true,
        };
        eval::evaluate(
            backend,
            &self.split,
            &self.ds.catalog,
            &self.ds.interactions,
            &opts,
            &mut |_, _| {},
        )
    }
}

#[test]
fn remote_numbers_equal_in_process_numbers() {
    let s = setup();
    let remote = s.connect(s.server(Fault::None));
    assert_eq!(remote.model_info().model_name, "mock");
    assert!(remote.describe().starts_with("server at http://127.0.0.1:"));
    let local = Reverse(
        LocalBackend::load(
            &s.split,
            &s.ds.interactions,
            &s.ds.catalog,
            Stage::Test,
            &s.specs,
        )
        .unwrap(),
    );
    let methods = "popularity,popularity+score,markov,markov+generate,markov+score@same";
    let a = s.eval(&remote, methods).unwrap();
    let b = s.eval(&local, methods).unwrap();
    assert_eq!(a.per_user, b.per_user);
    for (x, y) in a.methods.iter().zip(&b.methods) {
        assert_eq!(x.metrics, y.metrics, "{}", x.method);
    }
    // The adapter reached the server: `same` keeps the retriever's order.
    assert_eq!(a.methods[4].metrics, a.methods[2].metrics);
    assert_ne!(
        a.methods[1].metrics, a.methods[0].metrics,
        "reversal changes ranks"
    );
    // The server's stage timings are carried over (ms -> s).
    let t = &a.methods[3].times;
    assert!((t.prefill_s - 40.0 * 0.002).abs() < 1e-9, "{t:?}");
    assert!((t.decode_s - 40.0 * 0.003).abs() < 1e-9, "{t:?}");
    assert_eq!(t.prompt_tokens, 400);
}

#[test]
fn setup_mistakes_are_named_before_any_user_runs() {
    let s = setup();
    let remote = s.connect(s.server(Fault::None));
    let err = |m: &str| s.eval(&remote, m).unwrap_err().to_string();
    let e = err("itemknn");
    assert!(
        e.contains("no retriever \"itemknn\"") && e.contains("popularity"),
        "{e}"
    );
    let e = err("markov+score@lora");
    assert!(
        e.contains("no adapter \"lora\"") && e.contains("same"),
        "{e}"
    );

    let other = s.connect(s.server(Fault::OtherCatalog));
    let e = s.eval(&other, "markov").unwrap_err().to_string();
    assert!(e.contains("serve the same data set"), "{e}");

    // A server whose retrievers learnt from every interaction (the default `training =
    // "all"`) has seen the test targets: refused, with the setting that fixes it. So is one
    // built on the validation view.
    for (view, got) in [(ViewStage::All, "all"), (ViewStage::Valid, "valid")] {
        let leaky = s.connect(s.server_on(Fault::None, view));
        let e = s.eval(&leaky, "markov").unwrap_err().to_string();
        assert!(
            e.contains(&format!("learn from the {got} view"))
                && e.contains("training = \"test\"")
                && e.contains("PALR_RETRIEVAL__TRAINING=test"),
            "{e}"
        );
    }

    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = RemoteBackend::connect(
        &port.to_string(),
        &Default::default(),
        Arc::new(s.ds.catalog.clone()),
        Duration::from_secs(5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("cannot connect"), "{e}");
    let e = RemoteBackend::connect(
        "http://bad address",
        &Default::default(),
        Arc::new(s.ds.catalog.clone()),
        Duration::from_secs(5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a valid address"), "{e}");
}

#[test]
fn server_protocol_violations_are_errors() {
    let s = setup();
    let remote = s.connect(s.server(Fault::HistoryItem));
    let e = s.eval(&remote, "markov").unwrap_err().to_string();
    assert!(
        e.contains("history item") && e.contains("method markov"),
        "{e}"
    );
    let remote = s.connect(s.server(Fault::Stranger));
    let e = s.eval(&remote, "markov+score").unwrap_err().to_string();
    assert!(
        e.contains("not a candidate") && e.contains("markov+score"),
        "{e}"
    );
}
