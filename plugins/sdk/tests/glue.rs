//! Drives the `declare_retriever!` glue through the raw C table, as the host does, without
//! loading a library: version handshake, config and view hand-over, errors, panics, host
//! argument checks, output capacity.

use std::ffi::{CStr, c_void};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use palr_retriever_sdk::abi::*;
use palr_retriever_sdk::{
    Candidates, Corpus, Description, ItemFields, ItemTable, Query, Retriever, StrTable, TrainedOn,
    declare_retriever,
};

static DROPS: AtomicUsize = AtomicUsize::new(0);

/// Proposes every non-excluded item with score `-index`, or misbehaves as configured.
struct Probe {
    mode: String,
    n_items: u32,
    /// What `new` read from the corpus's item and view data, for `describe` to report.
    seen: String,
}

impl Drop for Probe {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        if self.mode == "panic_drop" {
            panic!("probe drop panics");
        }
    }
}

impl Retriever for Probe {
    const NAME: &'static CStr = c"probe";
    const DESCRIPTION: &'static CStr = c"glue test probe";

    fn new(config: &str, corpus: &Corpus<'_>) -> Result<Self, String> {
        match config {
            "error_init" => Err("init refused: bad option `x`".into()),
            "panic_init" => panic!("init exploded"),
            mode => {
                assert_eq!(corpus.n_users(), 2);
                assert_eq!(corpus.sequence(1), &[2, 0]);
                let seen = match corpus.item(2) {
                    Some(it) => format!(
                        "{} {} {:?} {:?} {:?} user1={:?} {}:{}",
                        it.id(),
                        it.title(),
                        it.year(),
                        it.genres().collect::<Vec<_>>(),
                        it.attr("country"),
                        corpus.user_id(1),
                        corpus.stage(),
                        corpus.fingerprint(),
                    ),
                    None => "no item data".into(),
                };
                Ok(Self {
                    mode: mode.to_owned(),
                    n_items: corpus.n_items(),
                    seen,
                })
            }
        }
    }

    fn retrieve(&self, query: &Query<'_>, out: &mut Candidates<'_>) -> Result<(), String> {
        match self.mode.as_str() {
            "error_retrieve" => return Err("index not ready".into()),
            "panic_retrieve" => panic!("retrieve exploded at k={}", out.capacity()),
            // Echo the query context as the candidates' scores.
            "context" => {
                let last_ts = query.history_timestamps().and_then(|t| t.last().copied());
                out.push(5, last_ts.unwrap_or(-1) as f32);
                out.push(4, query.request_time_ms() as f32);
                out.push(3, query.user_id().len() as f32);
                return Ok(());
            }
            _ => {}
        }
        for i in 0..self.n_items {
            if !query.is_excluded(i) {
                out.push(i, -(i as f32));
            }
        }
        // Pushing past the capacity is refused, never written.
        assert!(!out.push(0, 0.0) || !out.is_full());
        Ok(())
    }

    fn describe(&self) -> Description {
        match self.mode.as_str() {
            "panic_describe" => panic!("describe exploded"),
            "huge_describe" => Description {
                note: Some("x".repeat(100_000)),
                ..Default::default()
            },
            _ => Description {
                trained_on: Some(TrainedOn {
                    stage: "test".into(),
                    fingerprint: "ab".repeat(32),
                }),
                note: Some(self.seen.clone()),
            },
        }
    }
}

declare_retriever!(Probe);

const OFFSETS: [u64; 3] = [0, 2, 4];
const ITEMS: [u32; 4] = [0, 1, 2, 0];

fn view() -> PalrTrainingView {
    PalrTrainingView {
        n_items: 6,
        n_users: 2,
        n_interactions: 4,
        offsets: OFFSETS.as_ptr(),
        items: ITEMS.as_ptr(),
        timestamps: std::ptr::null(),
        user_ids: std::ptr::null(),
        item_data: PalrItems {
            ids: std::ptr::null(),
            titles: std::ptr::null(),
            years: std::ptr::null(),
            genre_offsets: std::ptr::null(),
            genres: std::ptr::null(),
            n_attrs: 0,
            attr_names: std::ptr::null(),
            attr_values: std::ptr::null(),
        },
        stage: PalrStr::EMPTY,
        fingerprint: PalrStr::EMPTY,
    }
}

fn table() -> &'static PalrRetrieverVTable {
    let t = palr_retriever_entry(ABI_VERSION);
    assert!(!t.is_null());
    unsafe { &*t }
}

struct Err256 {
    bytes: [u8; 256],
    buf: PalrTextBuf,
}

impl Err256 {
    fn new() -> Box<Self> {
        let mut e = Box::new(Self {
            bytes: [0; 256],
            buf: PalrTextBuf {
                ptr: std::ptr::null_mut(),
                capacity: 256,
                len: 0,
            },
        });
        e.buf.ptr = e.bytes.as_mut_ptr();
        e
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.buf.len]).unwrap()
    }
}

fn create(config: &str, view: &PalrTrainingView) -> Result<*mut c_void, (i32, String)> {
    let mut inst = std::ptr::null_mut();
    let mut err = Err256::new();
    let s = unsafe {
        (table().create.unwrap())(config.as_ptr(), config.len(), view, &mut inst, &mut err.buf)
    };
    if s == STATUS_OK {
        assert!(!inst.is_null());
        Ok(inst)
    } else {
        assert!(inst.is_null());
        Err((s, err.text().to_owned()))
    }
}

fn query(history: &[u32], exclude: &[u32]) -> PalrQuery {
    PalrQuery {
        history: history.as_ptr(),
        history_len: history.len(),
        exclude: exclude.as_ptr(),
        exclude_len: exclude.len(),
        history_timestamps: std::ptr::null(),
        request_time_ms: 0,
        user_id: PalrStr::EMPTY,
    }
}

fn retrieve(
    inst: *mut c_void,
    history: &[u32],
    exclude: &[u32],
    k: usize,
) -> Result<Vec<PalrScored>, (i32, String)> {
    retrieve_query(inst, &query(history, exclude), k)
}

fn retrieve_query(
    inst: *mut c_void,
    q: &PalrQuery,
    k: usize,
) -> Result<Vec<PalrScored>, (i32, String)> {
    let mut out = vec![MaybeUninit::<PalrScored>::uninit(); k];
    let mut len = usize::MAX;
    let mut err = Err256::new();
    let s = unsafe {
        (table().retrieve.unwrap())(inst, q, out.as_mut_ptr().cast(), k, &mut len, &mut err.buf)
    };
    if s == STATUS_OK {
        assert!(len <= k);
        Ok(out[..len]
            .iter()
            .map(|c| unsafe { c.assume_init() })
            .collect())
    } else {
        assert_eq!(len, 0, "out_len must be 0 on failure");
        Err((s, err.text().to_owned()))
    }
}

#[test]
fn entry_answers_only_its_abi_version() {
    assert!(palr_retriever_entry(ABI_VERSION + 1).is_null());
    assert!(palr_retriever_entry(0).is_null());
    let t = table();
    assert_eq!(t.abi_version, ABI_VERSION);
    let s = |p| unsafe { CStr::from_ptr(p) }.to_str().unwrap();
    assert_eq!(s(t.name), "probe");
    assert_eq!(s(t.description), "glue test probe");
    assert_eq!(s(t.plugin_version), env!("CARGO_PKG_VERSION"));
}

#[test]
fn ok_roundtrip_respects_exclusions_and_capacity() {
    let inst = create("ok", &view()).unwrap();
    let got = retrieve(inst, &[1], &[1, 3], 3).unwrap();
    let items: Vec<u32> = got.iter().map(|c| c.item).collect();
    assert_eq!(items, vec![0, 2, 4]);
    assert_eq!(retrieve(inst, &[], &[], 0).unwrap(), vec![]);
    let before = DROPS.load(Ordering::SeqCst);
    unsafe { (table().destroy.unwrap())(inst) };
    assert!(DROPS.load(Ordering::SeqCst) > before);
}

#[test]
fn plugin_errors_and_panics_become_statuses() {
    let (s, m) = create("error_init", &view()).unwrap_err();
    assert_eq!(
        (s, m.as_str()),
        (STATUS_ERROR, "init refused: bad option `x`")
    );
    let (s, m) = create("panic_init", &view()).unwrap_err();
    assert_eq!(s, STATUS_PANIC);
    assert!(m.contains("init exploded"), "{m}");

    let inst = create("error_retrieve", &view()).unwrap();
    assert_eq!(
        retrieve(inst, &[], &[], 2).unwrap_err(),
        (STATUS_ERROR, "index not ready".into())
    );
    unsafe { (table().destroy.unwrap())(inst) };

    let inst = create("panic_retrieve", &view()).unwrap();
    let (s, m) = retrieve(inst, &[], &[], 2).unwrap_err();
    assert_eq!(s, STATUS_PANIC);
    assert!(m.contains("retrieve exploded at k=2"), "{m}");
    // Still usable after a caught panic, and a panicking Drop does not unwind out.
    assert_eq!(retrieve(inst, &[], &[], 2).unwrap_err().0, STATUS_PANIC);
    unsafe { (table().destroy.unwrap())(inst) };

    let inst = create("panic_drop", &view()).unwrap();
    unsafe { (table().destroy.unwrap())(inst) };
    unsafe { (table().destroy.unwrap())(std::ptr::null_mut()) };
}

#[test]
fn broken_host_arguments_are_reported_not_trusted() {
    let mut bad = view();
    bad.n_items = 2; // item 2 is then out of range
    let (s, m) = create("ok", &bad).unwrap_err();
    assert_eq!(s, STATUS_INVALID_ARGUMENT);
    assert!(m.contains("out of range"), "{m}");

    let (s, m) = create(
        "\u{0}",
        &PalrTrainingView {
            offsets: std::ptr::null(),
            ..view()
        },
    )
    .unwrap_err();
    assert_eq!(s, STATUS_INVALID_ARGUMENT);
    assert!(m.contains("offsets is null"), "{m}");

    let inst = create("ok", &view()).unwrap();
    // History item 1 missing from the exclusion set; exclusion set unsorted.
    let (s, m) = retrieve(inst, &[1], &[], 2).unwrap_err();
    assert_eq!(s, STATUS_INVALID_ARGUMENT);
    assert!(m.contains("history item 1"), "{m}");
    let (s, _) = retrieve(inst, &[], &[3, 1], 2).unwrap_err();
    assert_eq!(s, STATUS_INVALID_ARGUMENT);
    unsafe { (table().destroy.unwrap())(inst) };
}

#[test]
fn error_text_is_truncated_at_a_char_boundary() {
    let mut bytes = [0u8; 5];
    let mut buf = PalrTextBuf {
        ptr: bytes.as_mut_ptr(),
        capacity: 5,
        len: 0,
    };
    unsafe { buf.write("abcé€") };
    assert_eq!(&bytes[..buf.len], "abcé".as_bytes());
    unsafe { buf.write("ab€") };
    assert_eq!(&bytes[..buf.len], "ab€".as_bytes());
    let mut buf = PalrTextBuf {
        ptr: bytes.as_mut_ptr(),
        capacity: 2,
        len: 9,
    };
    unsafe { buf.write("€") };
    assert_eq!(buf.len, 0);
}

fn describe(inst: *mut c_void, capacity: usize) -> (i32, String) {
    let mut bytes = vec![0u8; capacity];
    let mut buf = PalrTextBuf {
        ptr: bytes.as_mut_ptr(),
        capacity,
        len: 0,
    };
    let s = unsafe { (table().describe.unwrap())(inst, &mut buf) };
    (s, String::from_utf8(bytes[..buf.len].to_vec()).unwrap())
}

#[test]
fn item_data_view_and_query_context_reach_the_plugin() {
    let items = ItemTable::new(
        (0..6)
            .map(|i| ItemFields {
                id: format!("m{i}"),
                title: format!("Movie {i}"),
                year: (i == 2).then_some(1999),
                genres: if i == 2 {
                    vec!["Drama".into(), "War".into()]
                } else {
                    vec![]
                },
                attrs: vec![("country".into(), format!("c{i}"))],
            })
            .collect(),
    )
    .unwrap();
    let users = StrTable::new(vec!["alice".into(), "bob".into()]);
    let fp = "0f".repeat(32);
    let v = PalrTrainingView {
        user_ids: users.raw().as_ptr(),
        item_data: items.raw(),
        stage: PalrStr::borrow("valid"),
        fingerprint: PalrStr::borrow(&fp),
        ..view()
    };
    let inst = create("ok", &v).unwrap();
    let (s, json) = describe(inst, 4096);
    assert_eq!(s, STATUS_OK);
    let d: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(d["trained_on"]["stage"], "test");
    assert_eq!(d["trained_on"]["fingerprint"], "ab".repeat(32));
    assert_eq!(
        d["note"],
        format!(
            "m2 Movie 2 Some(1999) [\"Drama\", \"War\"] Some(\"c2\") user1=Some(\"bob\") valid:{fp}"
        )
    );
    unsafe { (table().destroy.unwrap())(inst) };

    // Without item data the corpus says so instead of failing.
    let inst = create("ok", &view()).unwrap();
    let (_, json) = describe(inst, 4096);
    assert!(json.contains("no item data"), "{json}");
    unsafe { (table().destroy.unwrap())(inst) };

    // The query's timestamps, request time and user id.
    let inst = create("context", &view()).unwrap();
    let ts = [100i64, 250];
    let q = PalrQuery {
        history_timestamps: ts.as_ptr(),
        request_time_ms: 1234,
        user_id: PalrStr::borrow("carol"),
        ..query(&[0, 1], &[0, 1])
    };
    let got: Vec<(u32, f32)> = retrieve_query(inst, &q, 3)
        .unwrap()
        .iter()
        .map(|c| (c.item, c.score))
        .collect();
    assert_eq!(got, [(5, 250.0), (4, 1234.0), (3, 5.0)]);
    // A user id that is not UTF-8 is the host's bug, reported as such.
    let bad = [0xffu8];
    let q = PalrQuery {
        user_id: PalrStr {
            ptr: bad.as_ptr(),
            len: 1,
        },
        ..query(&[], &[])
    };
    let (s, m) = retrieve_query(inst, &q, 1).unwrap_err();
    assert_eq!(s, STATUS_INVALID_ARGUMENT);
    assert!(m.contains("user_id"), "{m}");
    unsafe { (table().destroy.unwrap())(inst) };
}

#[test]
fn describe_failures_are_statuses_not_unwinds() {
    let inst = create("panic_describe", &view()).unwrap();
    let (s, m) = describe(inst, 256);
    assert_eq!(s, STATUS_PANIC);
    assert!(m.contains("describe exploded"), "{m}");
    unsafe { (table().destroy.unwrap())(inst) };
    let inst = create("huge_describe", &view()).unwrap();
    let (s, m) = describe(inst, 256);
    assert_eq!(s, STATUS_ERROR);
    assert!(m.contains("does not fit"), "{m}");
    unsafe { (table().destroy.unwrap())(inst) };
}
