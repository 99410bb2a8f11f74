//! The C face of the plugin ABI: `plugins/include/palr_retriever.h` against
//! `palr_retriever_sdk::abi`, and the C example plugin (`plugins/examples/c-popularity`)
//! compiled and run through the host and the conformance kit.
//!
//! Needs a C compiler (`$CC`, else `cc`); without one these tests fail and say so. The Rust
//! plugins they compare with come from `cargo build --release --workspace`.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use palr::retrieval::conformance::{self, Outcome};
use palr::retrieval::{
    PluginFailure, RetrievalError, RetrieverRegistry, RetrieverSpec, TrainingView,
    default_search_dirs, resolve_library,
};
use palr_retriever_sdk::abi::*;

// ---------------------------------------------------------------------------------------------
// The C compiler
// ---------------------------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn include_dir() -> PathBuf {
    repo().join("plugins/include")
}

/// Runs the C compiler (`$CC`, else `cc`) with `args`; panics with its output on failure, and
/// with an instruction to install one when there is none.
fn cc(args: &[&str]) {
    let compiler = std::env::var("CC")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "cc".to_owned());
    // `$CC` may carry flags (`gcc -m64`), as make and cc-rs allow.
    let mut words = compiler.split_whitespace();
    let program = words.next().unwrap_or("cc");
    let output = Command::new(program)
        .args(words)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "no C compiler: running `{program}` failed ({e}). These tests compile the C \
                 header and the C example plugin: install a C compiler (Debian/Ubuntu: \
                 `apt-get install gcc`; it is also what rustc links with) or point `CC` at one"
            )
        });
    assert!(
        output.status.success(),
        "`{compiler} {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the C example into `dir` with the flags its README gives; returns the library.
fn build_c_example(dir: &Path) -> PathBuf {
    let lib = dir.join(libloading::library_filename("palr_c_popularity"));
    let source = repo().join("plugins/examples/c-popularity/popularity.c");
    let include = include_dir();
    cc(&[
        "-shared",
        "-fPIC",
        "-O2",
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-I",
        include.to_str().unwrap(),
        source.to_str().unwrap(),
        "-o",
        lib.to_str().unwrap(),
    ]);
    lib
}

// ---------------------------------------------------------------------------------------------
// The header against abi.rs
// ---------------------------------------------------------------------------------------------

/// The C spelling of a Rust ABI type, derived from the type itself: what the header must
/// declare for a field or function of that Rust type. Pointers use east const (`T const *`)
/// so that pointers to pointers spell right.
trait CType {
    fn c_type() -> String;
}

macro_rules! c_names {
    ($($t:ty => $c:literal),* $(,)?) => {
        $(impl CType for $t { fn c_type() -> String { $c.to_owned() } })*
    };
}

c_names! {
    () => "void",
    c_void => "void",
    u8 => "uint8_t",
    u32 => "uint32_t",
    i32 => "int32_t",
    u64 => "uint64_t",
    i64 => "int64_t",
    usize => "size_t",
    f32 => "float",
    PalrStr => "PalrStr",
    PalrItems => "PalrItems",
    PalrTrainingView => "PalrTrainingView",
    PalrQuery => "PalrQuery",
    PalrScored => "PalrScored",
    PalrTextBuf => "PalrTextBuf",
    PalrRetrieverVTable => "PalrRetrieverVTable",
}

impl<T: CType> CType for *const T {
    fn c_type() -> String {
        format!("{} const *", T::c_type())
    }
}

impl<T: CType> CType for *mut T {
    fn c_type() -> String {
        format!("{} *", T::c_type())
    }
}

/// A nullable function pointer is the same C type as the function pointer.
impl<F: CType> CType for Option<F> {
    fn c_type() -> String {
        F::c_type()
    }
}

macro_rules! c_fn_pointers {
    ($(($($a:ident),+))*) => {$(
        impl<R: CType, $($a: CType),+> CType for unsafe extern "C" fn($($a),+) -> R {
            fn c_type() -> String {
                let params: Vec<String> = vec![$($a::c_type()),+];
                format!("{} (*)({})", R::c_type(), params.join(", "))
            }
        }
    )*};
}

c_fn_pointers! { (A) (A, B) (A, B, C, D, E) (A, B, C, D, E, F) }

/// One expected line of the C program's output, and the C statement that prints it.
struct Probe {
    /// Two words, e.g. `offset PalrQuery.exclude`; the program prints `key value`.
    key: String,
    expected: String,
    /// For a type check: the C type abi.rs implies.
    c_type: Option<String>,
    c_statement: String,
}

fn number(key: String, expected: impl ToString, c_expr: &str) -> Probe {
    Probe {
        c_statement: format!("printf(\"{key} %llu\\n\", (unsigned long long)({c_expr}));"),
        key,
        expected: expected.to_string(),
        c_type: None,
    }
}

fn signed(key: String, expected: i64, c_expr: &str) -> Probe {
    Probe {
        c_statement: format!("printf(\"{key} %lld\\n\", (long long)({c_expr}));"),
        key,
        expected: expected.to_string(),
        c_type: None,
    }
}

fn string(key: String, expected: &str, c_expr: &str) -> Probe {
    Probe {
        c_statement: format!("printf(\"{key} %s\\n\", {c_expr});"),
        key,
        expected: expected.to_owned(),
        c_type: None,
    }
}

/// Prints 1 when the C expression `c_expr` has exactly the C type `c_type` (`_Generic` does not
/// evaluate it).
fn has_type(key: String, c_expr: &str, c_type: &str) -> Probe {
    Probe {
        c_statement: format!(
            "printf(\"{key} %d\\n\", _Generic(({c_expr}), {c_type}: 1, default: 0));"
        ),
        key,
        expected: "1".to_owned(),
        c_type: Some(c_type.to_owned()),
    }
}

/// The C type of a field, from a typed accessor (the accessor pins the Rust field's type).
fn field_c_type<S, T: CType>(_: fn(&S) -> &T) -> String {
    T::c_type()
}

/// The size of a field's type.
fn field_size<S, T>(_: fn(&S) -> &T) -> usize {
    std::mem::size_of::<T>()
}

/// A field's C type: derived from its Rust type, or given (`"char const *"`) together with
/// the Rust type it stands for, which is checked.
macro_rules! field_type {
    ($s:ident, $f:ident) => {
        field_c_type::<$s, _>(|s| &s.$f)
    };
    ($s:ident, $f:ident, $c:literal, $rt:ty) => {{
        let _: fn(&$s) -> &$rt = |s| &s.$f;
        $c.to_owned()
    }};
}

/// Size, alignment, and every field's offset, size and type of a `#[repr(C)]` struct. The
/// destructuring pattern lists every field without `..`: a field added in abi.rs and not here
/// fails to compile.
macro_rules! layout {
    ($probes:ident, $s:ident { $($f:ident $(as $c:literal: $rt:ty)?),* $(,)? }) => {{
        #[allow(dead_code)]
        fn every_field_is_listed(s: &$s) {
            let $s { $($f: _),* } = s;
        }
        let name = stringify!($s);
        $probes.push(number(
            format!("size {name}"),
            std::mem::size_of::<$s>(),
            &format!("sizeof({name})"),
        ));
        $probes.push(number(
            format!("align {name}"),
            std::mem::align_of::<$s>(),
            &format!("_Alignof({name})"),
        ));
        $(
            let field = stringify!($f);
            let member = format!("(({name} *)0)->{field}");
            $probes.push(number(
                format!("offset {name}.{field}"),
                std::mem::offset_of!($s, $f),
                &format!("offsetof({name}, {field})"),
            ));
            $probes.push(number(
                format!("size {name}.{field}"),
                field_size::<$s, _>(|s| &s.$f),
                &format!("sizeof({member})"),
            ));
            let c_type = field_type!($s, $f $(, $c, $rt)?);
            $probes.push(has_type(format!("type {name}.{field}"), &member, &c_type));
        )*
    }};
}

/// What the header must say, derived from abi.rs.
fn header_expectations() -> Vec<Probe> {
    let mut probes = Vec::new();
    layout!(probes, PalrStr { ptr, len });
    layout!(
        probes,
        PalrItems {
            ids,
            titles,
            years,
            genre_offsets,
            genres,
            n_attrs,
            attr_names,
            attr_values,
        }
    );
    layout!(
        probes,
        PalrTrainingView {
            n_items,
            n_users,
            n_interactions,
            offsets,
            items,
            timestamps,
            user_ids,
            item_data,
            stage,
            fingerprint,
        }
    );
    layout!(
        probes,
        PalrQuery {
            history,
            history_len,
            exclude,
            exclude_len,
            history_timestamps,
            request_time_ms,
            user_id,
        }
    );
    layout!(probes, PalrScored { item, score });
    layout!(probes, PalrTextBuf { ptr, capacity, len });
    // The table's strings are `const char *` in C whatever Rust's `c_char` is on the target.
    layout!(
        probes,
        PalrRetrieverVTable {
            abi_version,
            name as "char const *": *const c_char,
            description as "char const *": *const c_char,
            plugin_version as "char const *": *const c_char,
            create,
            retrieve,
            destroy,
            describe,
        }
    );

    // The function-pointer typedefs and the entry function's declaration.
    for (typedef, c_type) in [
        ("PalrEntryFn", EntryFn::c_type()),
        ("PalrCreateFn", CreateFn::c_type()),
        ("PalrRetrieveFn", RetrieveFn::c_type()),
        ("PalrDescribeFn", DescribeFn::c_type()),
        ("PalrDestroyFn", DestroyFn::c_type()),
    ] {
        probes.push(has_type(
            format!("type {typedef}"),
            &format!("({typedef})0"),
            &c_type,
        ));
    }
    probes.push(has_type(
        "type palr_retriever_entry".into(),
        "&palr_retriever_entry",
        &EntryFn::c_type(),
    ));

    // Constants.
    probes.push(number(
        "const PALR_ABI_VERSION".into(),
        ABI_VERSION,
        "PALR_ABI_VERSION",
    ));
    for (name, value) in [
        ("PALR_STATUS_OK", STATUS_OK),
        ("PALR_STATUS_ERROR", STATUS_ERROR),
        ("PALR_STATUS_PANIC", STATUS_PANIC),
        ("PALR_STATUS_INVALID_ARGUMENT", STATUS_INVALID_ARGUMENT),
        ("PALR_NO_YEAR", NO_YEAR),
    ] {
        probes.push(signed(format!("const {name}"), value.into(), name));
    }
    probes.push(string(
        "const PALR_ENTRY_SYMBOL".into(),
        ENTRY_SYMBOL.to_str().unwrap(),
        "PALR_ENTRY_SYMBOL",
    ));
    probes.push(string(
        "const PALR_STAGE_ALL".into(),
        STAGE_ALL,
        "PALR_STAGE_ALL",
    ));
    probes
}

#[test]
fn c_header_matches_the_rust_abi() {
    let probes = header_expectations();
    let dir = tempfile::tempdir().unwrap();
    let program = format!(
        "/* Generated by tests/c_abi.rs: prints what palr_retriever.h declares. */\n\
         #include \"palr_retriever.h\"\n#include <stddef.h>\n#include <stdio.h>\n\n\
         int main(void) {{\n    {}\n    return 0;\n}}\n",
        probes
            .iter()
            .map(|p| p.c_statement.as_str())
            .collect::<Vec<_>>()
            .join("\n    ")
    );
    let source = dir.path().join("layout.c");
    std::fs::write(&source, program).unwrap();
    let exe = dir.path().join("layout");
    let include = include_dir();
    cc(&[
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-I",
        include.to_str().unwrap(),
        source.to_str().unwrap(),
        "-o",
        exe.to_str().unwrap(),
    ]);
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: BTreeMap<String, String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            // Keys have one space (`size PalrStr.ptr`); the value is the rest.
            let mut parts = l.splitn(3, ' ');
            let key = format!("{} {}", parts.next()?, parts.next()?);
            Some((key, parts.next().unwrap_or_default().to_owned()))
        })
        .collect();
    let mismatches: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            let got = printed.get(&p.key).map(String::as_str);
            (got != Some(p.expected.as_str())).then(|| match (&p.c_type, got) {
                (Some(t), Some(_)) => {
                    format!("{}: abi.rs makes it `{t}`, the header does not", p.key)
                }
                (_, Some(got)) => {
                    format!("{}: abi.rs says {}, the header {got}", p.key, p.expected)
                }
                (_, None) => format!("{}: the program printed nothing for it", p.key),
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "plugins/include/palr_retriever.h disagrees with plugins/sdk/src/abi.rs (update both \
         together):\n  {}",
        mismatches.join("\n  ")
    );
}

/// The header is also plain C: it compiles alone with every warning as an error, and a
/// translation unit may include it twice.
#[test]
fn c_header_compiles_cleanly_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("twice.c");
    std::fs::write(
        &source,
        "#include \"palr_retriever.h\"\n#include \"palr_retriever.h\"\n\
         static const PalrRetrieverVTable *(*entry)(uint32_t) = palr_retriever_entry;\n\
         int use_entry(void) { return entry != NULL; }\n",
    )
    .unwrap();
    let include = include_dir();
    let object = dir.path().join("twice.o");
    cc(&[
        "-c",
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-I",
        include.to_str().unwrap(),
        source.to_str().unwrap(),
        "-o",
        object.to_str().unwrap(),
    ]);
}

// ---------------------------------------------------------------------------------------------
// The C example plugin
// ---------------------------------------------------------------------------------------------

/// Six users over eight items; counts 0:3 1:5 2:5 3:2 4:2 5:1 6:1 7:0.
fn view() -> Arc<TrainingView> {
    let seqs: [&[u32]; 6] = [
        &[0, 1, 2, 3],
        &[0, 1, 2],
        &[1, 2, 4],
        &[0, 1, 5],
        &[2, 3, 4, 6],
        &[1, 2],
    ];
    Arc::new(
        TrainingView::from_sequences(8, &seqs)
            .unwrap()
            .with_stage("all"),
    )
}

fn require_built(lib: &str) -> PathBuf {
    resolve_library(lib, &default_search_dirs()).unwrap_or_else(|tried| {
        panic!("{lib} not built (tried {tried:?}); run `cargo build --release --workspace` first")
    })
}

#[test]
fn c_example_answers_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let lib = build_c_example(dir.path());
    let reg = RetrieverRegistry::new(view());
    let path = lib.to_str().unwrap();
    let info = reg.load(&RetrieverSpec::new("cpop", path, "{}")).unwrap();
    assert_eq!(info.plugin_name, "c-popularity");
    assert_eq!(info.plugin_version, "1.0.0");
    assert_eq!(info.abi_version, 2);
    assert_eq!((info.trained_on, info.note), (None, None), "no describe");

    // Most popular first, ties by lower index, history and exclusions left out.
    assert_eq!(
        reg.retrieve("cpop", &[1], 3, &[3]).unwrap(),
        vec![(2, 5.0), (0, 3.0), (4, 2.0)]
    );
    assert_eq!(
        reg.retrieve("cpop", &[], 100, &[]).unwrap(),
        vec![
            (1, 5.0),
            (2, 5.0),
            (0, 3.0),
            (3, 2.0),
            (4, 2.0),
            (5, 1.0),
            (6, 1.0),
            (7, 0.0)
        ]
    );
    assert!(
        reg.retrieve("cpop", &[0, 1, 2, 3, 4, 5, 6], 5, &[7])
            .unwrap()
            .is_empty()
    );

    // The same answers as the Rust popularity plugin, query for query.
    reg.load(&RetrieverSpec::new(
        "rpop",
        require_built("palr_retriever_popularity").to_str().unwrap(),
        "{}",
    ))
    .unwrap();
    for (history, k, exclude) in [
        (vec![], 1, vec![]),
        (vec![2, 2, 0], 4, vec![6]),
        (vec![7], 8, vec![1, 3]),
        (vec![5, 4], 3, vec![]),
    ] {
        assert_eq!(
            reg.retrieve("cpop", &history, k, &exclude).unwrap(),
            reg.retrieve("rpop", &history, k, &exclude).unwrap(),
            "history {history:?}, k {k}, exclude {exclude:?}"
        );
    }

    // min_count: only items with at least that many interactions.
    reg.load(&RetrieverSpec::new("cpop2", path, r#"{ "min_count" : 2 }"#))
        .unwrap();
    assert_eq!(
        reg.retrieve("cpop2", &[2], 10, &[]).unwrap(),
        vec![(1, 5.0), (0, 3.0), (3, 2.0), (4, 2.0)]
    );
    assert_eq!(reg.get("cpop").unwrap().stats().contract_violations, 0);
}

#[test]
fn c_example_refuses_bad_configs_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lib = build_c_example(dir.path());
    let path = lib.to_str().unwrap();
    let reg = RetrieverRegistry::new(view());
    for ok in [
        "",
        " \n",
        "{}",
        r#"{"min_count": 0}"#,
        "{\"min_count\":18446744073709551615}",
    ] {
        reg.load(&RetrieverSpec::new("c", path, ok))
            .unwrap_or_else(|e| panic!("config {ok:?}: {e}"));
    }
    for (config, says) in [
        (r#"{"min_cnt": 2}"#, r#"unknown config key "min_cnt""#),
        (r#"{"min_count": -1}"#, "non-negative integer"),
        (r#"{"min_count": 1.5}"#, "whole number"),
        (r#"{"min_count": 1e3}"#, "whole number"),
        (r#"{"min_count": "2"}"#, "non-negative integer, found `\"`"),
        (r#"{"min_count": 01}"#, "leading zeros"),
        (r#"{"min_count": 99999999999999999999}"#, "too large"),
        (r#"{"min_count": 1, "min_count": 2}"#, "given twice"),
        (r#"{"min_count": 1,}"#, "where a quoted key belongs"),
        (r#"{"min_count" 1}"#, "where `:` belongs"),
        (r#"{"min_count": 1"#, "the end of the config"),
        (r#"{"min_count": 1} x"#, "after the object"),
        (r#"{"min_count"#, "not terminated"),
        ("[1]", "where a JSON object starts"),
        ("null", "where a JSON object starts"),
    ] {
        match reg.load(&RetrieverSpec::new("c", path, config)) {
            Err(RetrievalError::Init {
                failure: PluginFailure::Error,
                message,
                ..
            }) => assert!(message.contains(says), "config {config}: {message}"),
            other => panic!("config {config}: expected a clean init error, got {other:?}"),
        }
    }
}

#[test]
fn c_example_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let lib = build_c_example(dir.path());
    for config in ["{}", r#"{"min_count": 3}"#] {
        let report = conformance::check_plugin(&lib, config);
        assert!(report.passed(), "config {config}:\n{report}");
        assert_eq!(report.plugin.as_deref(), Some("c-popularity 1.0.0 (ABI 2)"));
        assert!(
            report.checks.iter().all(|c| c.outcome == Outcome::Pass),
            "{report}"
        );
    }
}
