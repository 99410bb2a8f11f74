//! Loaders of `palr::data` on small files written into temp dirs: every format, format
//! detection, the tie-break rule, and the error cases (missing column, bad number, unknown item,
//! empty file, wrong encoding), plus the `palr data stats` command.

use std::fs;
use std::path::Path;

use palr::data::{
    Catalog, DataError, Dataset, Format, IdOrder, LoadOptions, Split, TitleStyle, UnknownItems,
    load_catalog, locate,
};

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::write(dir.join(name), bytes).unwrap();
}

fn load(dir: &Path) -> Result<Dataset, DataError> {
    Dataset::load(dir, &LoadOptions::default())
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("expected an error loading {}", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// External item ids of user `user_id`'s sequence.
fn seq(ds: &Dataset, user_id: &str) -> Vec<String> {
    let u = ds.interactions.user_index(user_id).expect("user");
    ds.interactions
        .items_of(u)
        .iter()
        .map(|&i| ds.catalog.id(i).unwrap().to_string())
        .collect()
}

fn titles(cat: &Catalog) -> Vec<&str> {
    cat.items().iter().map(|i| i.title.as_str()).collect()
}

// ---------------------------------------------------------------- RecBole atomic files

const RB_ITEM: &str = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
1\tToy Story\t1995\tAnimation Children's Comedy\n\
9\tUsual Suspects, The\t1995\tCrime Thriller\n\
10\tunkonwn\tunkonwn\tunknown\n\
2\tGoldenEye\t1995\tAction\n";

const RB_INTER: &str = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
7\t10\t3\t100\n\
7\t9\t4\t100\n\
7\t1\t5\t50\n\
7\t2\t1\t200\n\
3\t1\t2\t10\n";

fn recbole_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("toy");
    fs::create_dir(&dir).unwrap();
    write(&dir, "toy.item", RB_ITEM);
    write(&dir, "toy.inter", RB_INTER);
    d
}

#[test]
fn recbole_loads_catalog_attributes_and_sorted_sequences() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    let ds = load(&dir).unwrap();
    assert_eq!(ds.files.format, Format::RecBole);
    assert_eq!(ds.files.items, dir.join("toy.item"));

    let cat = &ds.catalog;
    assert_eq!(cat.len(), 4);
    assert_eq!(
        titles(cat),
        ["Toy Story", "Usual Suspects, The", "unkonwn", "GoldenEye"]
    );
    let toy = cat.item(cat.index_of("1").unwrap()).unwrap();
    assert_eq!(toy.year, Some(1995));
    assert_eq!(toy.genres, ["Animation", "Children's", "Comedy"]);
    assert!(toy.attrs.is_empty());
    // an unparseable year stays as a raw attribute
    let unk = cat.item(cat.index_of("10").unwrap()).unwrap();
    assert_eq!(unk.year, None);
    assert_eq!(unk.attrs["release_year"], "unkonwn");
    assert_eq!(
        cat.title_styled(cat.index_of("9").unwrap(), TitleStyle::ArticleFirst)
            .unwrap(),
        "The Usual Suspects"
    );

    let inter = &ds.interactions;
    assert_eq!(inter.n_users(), 2);
    assert_eq!(inter.len(), 5);
    assert_eq!(inter.user_ids(), ["3", "7"]);
    // (timestamp, numeric item id): 1@50, 9@100, 10@100, 2@200
    assert_eq!(seq(&ds, "7"), ["1", "9", "10", "2"]);
    assert_eq!(inter.timestamps_of(1), [50, 100, 100, 200]);
    assert_eq!(inter.ratings_of(1), [5.0, 4.0, 3.0, 1.0]);
    // flat arrays: offsets + items
    assert_eq!(inter.sequences().offsets(), [0, 1, 5]);
    assert_eq!(inter.sequences().items().len(), 5);

    let split = Split::leave_one_out(inter);
    let u7 = inter.user_index("7").unwrap();
    let t = split.test(u7).unwrap();
    let v = split.valid(u7).unwrap();
    assert_eq!(cat.id(t.target), Some("2"));
    assert_eq!(cat.id(v.target), Some("10"));
    assert!(split.test(inter.user_index("3").unwrap()).is_none());
}

#[test]
fn tie_break_is_numeric_for_integer_ids_and_bytewise_otherwise() {
    // Same data twice: with integer ids "9" sorts before "10"; once one id is not an integer,
    // ids compare as strings and "10" sorts first.
    for (extra_item, expected) in [("", ["9", "10"]), ("x\tX\n", ["10", "9"])] {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "t.item",
            format!("item_id:token\ttitle:token_seq\n10\tTen\n9\tNine\n{extra_item}"),
        );
        write(
            d.path(),
            "t.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\t10\t5\nu\t9\t5\n",
        );
        let ds = load(d.path()).unwrap();
        assert_eq!(seq(&ds, "u"), expected, "extra item {extra_item:?}");
        let want_order = if extra_item.is_empty() {
            IdOrder::Numeric
        } else {
            IdOrder::Lexicographic
        };
        assert_eq!(ds.catalog.id_order(), want_order);
    }
}

#[test]
fn recbole_missing_column_names_file_column_and_header() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    write(
        &dir,
        "toy.inter",
        "user_id:token\titem_id:token\trating:float\n7\t1\t3\n",
    );
    let err = load_err(&dir);
    assert!(
        err.contains("toy.inter:1: missing column `timestamp`"),
        "{err}"
    );
    assert!(err.contains("user_id, item_id, rating"), "{err}");

    write(&dir, "toy.item", "item_id:token\tyear:token\n1\t1995\n");
    let err = load_err(&dir);
    assert!(
        err.contains("toy.item:1: missing column `title` or `movie_title`"),
        "{err}"
    );
}

#[test]
fn recbole_bad_header_field_count_and_numbers() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    let cases = [
        (
            "user_id\titem_id:token\ttimestamp:float\n",
            "toy.inter:1: header field `user_id` is not `name:type`",
        ),
        (
            "user_id:token\titem_id:token\ttimestamp:date\n",
            "unknown type `date`",
        ),
        (
            "user_id:token\titem_id:token\ttimestamp:float\n7\t1\t5\n7\t2\n",
            "toy.inter:3: expected 3 tab-separated fields as in the header, found 2",
        ),
        (
            "user_id:token\titem_id:token\ttimestamp:float\n7\t1\t5\n7\t2\tyesterday\n",
            "toy.inter:3: timestamp `yesterday` is not an integer",
        ),
        (
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t1\tfive\t5\n",
            "toy.inter:2: rating `five` is not a finite number",
        ),
        (
            "user_id:token\titem_id:token\ttimestamp:float\n\t1\t5\n",
            "toy.inter:2: empty user id",
        ),
    ];
    for (inter, want) in cases {
        write(&dir, "toy.inter", inter);
        let err = load_err(&dir);
        assert!(err.contains(want), "want {want:?}, got {err}");
    }
}

#[test]
fn unknown_items_fail_on_the_first_bad_line_or_are_skipped_and_counted() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    write(
        &dir,
        "toy.inter",
        "user_id:token\titem_id:token\ttimestamp:float\n7\t1\t5\n7\t404\t6\n7\t405\t7\n",
    );
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, DataError::UnknownItem { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("toy.inter:3: item id `404` is not in the catalog"),
        "{msg}"
    );
    assert!(msg.contains("toy.item"), "{msg}");
    assert!(msg.contains("--skip-unknown-items"), "{msg}");

    let ds = Dataset::load(
        &dir,
        &LoadOptions {
            unknown_items: UnknownItems::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.skipped_unknown_items, 2);
    assert_eq!(ds.interactions.len(), 1);

    // skipping everything leaves nothing: an error, not an empty data set
    write(
        &dir,
        "toy.inter",
        "user_id:token\titem_id:token\ttimestamp:float\n7\t404\t6\n",
    );
    let err = Dataset::load(
        &dir,
        &LoadOptions {
            unknown_items: UnknownItems::Skip,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no interactions left after skipping 1 with unknown items"),
        "{err}"
    );
}

#[test]
fn empty_files_are_errors() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    write(&dir, "toy.inter", "");
    let err = load_err(&dir);
    assert!(
        err.contains("toy.inter: the file is empty; expected"),
        "{err}"
    );
    write(
        &dir,
        "toy.inter",
        "user_id:token\titem_id:token\ttimestamp:float\n",
    );
    let err = load_err(&dir);
    assert!(err.contains("toy.inter: no interactions"), "{err}");
    write(&dir, "toy.item", "\n\n");
    let err = load_err(&dir);
    assert!(err.contains("toy.item: the file is empty"), "{err}");
    write(&dir, "toy.item", "item_id:token\ttitle:token_seq\n");
    let err = load_err(&dir);
    assert!(err.contains("toy.item: no items"), "{err}");
}

#[test]
fn recbole_rejects_latin1_bytes_with_line_number() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    write(
        &dir,
        "toy.item",
        b"item_id:token\ttitle:token_seq\n1\tA\n2\tMis\xe9rables, Les\n".as_slice(),
    );
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, DataError::Encoding { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("toy.item:3: not valid UTF-8"), "{msg}");
    assert!(msg.contains("byte 0xe9"), "{msg}");
}

#[test]
fn duplicate_item_ids_name_both_lines() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    write(
        &dir,
        "toy.item",
        "item_id:token\ttitle:token_seq\n1\tA\n2\tB\n1\tC\n",
    );
    let err = load_err(&dir);
    assert!(
        err.contains("toy.item:4: duplicate item id `1` (first defined on line 2)"),
        "{err}"
    );
    write(&dir, "toy.item", "item_id:token\ttitle:token_seq\n1\t  \n");
    let err = load_err(&dir);
    assert!(
        err.contains("toy.item:2: item `1` has an empty title"),
        "{err}"
    );
}

// ---------------------------------------------------------------- raw MovieLens 100k

fn u_item_line(id: u32, title: &[u8], date: &str, genres: &[usize]) -> Vec<u8> {
    let mut l = format!("{id}|").into_bytes();
    l.extend_from_slice(title);
    l.extend_from_slice(format!("|{date}||http://x/{id}").as_bytes());
    for g in 0..19 {
        l.extend_from_slice(if genres.contains(&g) { b"|1" } else { b"|0" });
    }
    l.push(b'\n');
    l
}

#[test]
fn movielens_100k_reads_latin1_titles_and_genre_flags() {
    let d = tempfile::tempdir().unwrap();
    let mut item = u_item_line(1, b"Toy Story (1995)", "01-Jan-1995", &[3, 4, 5]);
    item.extend(u_item_line(
        543,
        b"Mis\xe9rables, Les (1995)",
        "01-Jan-1995",
        &[8, 12],
    ));
    item.extend(u_item_line(267, b"unknown", "", &[0]));
    write(d.path(), "u.item", &item);
    write(
        d.path(),
        "u.data",
        "196\t543\t3\t881250949\n196\t1\t4\t881250949\n22\t267\t1\t878887116\n",
    );
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.files.format, Format::MovieLens100k);
    let cat = &ds.catalog;
    assert_eq!(
        titles(cat),
        ["Toy Story (1995)", "Misérables, Les (1995)", "unknown"]
    );
    let toy = cat.item(0).unwrap();
    assert_eq!(toy.genres, ["Animation", "Children's", "Comedy"]);
    assert_eq!(toy.year, Some(1995));
    assert_eq!(toy.attrs["release_date"], "01-Jan-1995");
    assert_eq!(toy.attrs["imdb_url"], "http://x/1");
    assert!(!toy.attrs.contains_key("video_release_date"));
    assert_eq!(cat.item(1).unwrap().genres, ["Drama", "Musical"]);
    let unknown = cat.item(2).unwrap();
    assert_eq!(
        (unknown.year, unknown.genres.as_slice()),
        (None, &["unknown".to_string()][..])
    );
    // tie at 881250949: numeric order puts 1 before 543
    assert_eq!(seq(&ds, "196"), ["1", "543"]);
    assert_eq!(ds.interactions.user_ids(), ["22", "196"]);

    // the same file already converted to UTF-8 reads the same
    let utf8: String = item.iter().map(|&b| char::from(b)).collect();
    write(d.path(), "u.item", utf8.as_bytes());
    assert_eq!(
        titles(&load(d.path()).unwrap().catalog)[1],
        "Misérables, Les (1995)"
    );
}

#[test]
fn movielens_100k_uses_u_genre_and_checks_flags() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "u.genre", "Odd|1\nEven|0\n\n");
    write(
        d.path(),
        "u.item",
        "1|A (1990)|||x|0|1\n2|B (1991)|||y|1|1\n",
    );
    write(d.path(), "u.data", "1\t1\t5\t10\n");
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.catalog.item(0).unwrap().genres, ["Odd"]);
    assert_eq!(ds.catalog.item(1).unwrap().genres, ["Even", "Odd"]);

    write(d.path(), "u.item", "1|A (1990)|||x|0|2\n");
    let err = load_err(d.path());
    assert!(
        err.contains("u.item:1: genre flag for `Odd` is `2`, expected 0 or 1"),
        "{err}"
    );
    write(d.path(), "u.item", "1|A (1990)|||x|0\n");
    let err = load_err(d.path());
    assert!(
        err.contains("u.item:1: expected 7 `|`-separated fields (5 + 2 genre flags), found 6"),
        "{err}"
    );
    write(d.path(), "u.item", "1|A (1990)|||x|0|1\n");
    write(d.path(), "u.data", "1\t1\t5\n");
    let err = load_err(d.path());
    assert!(
        err.contains("u.data:1: expected 4 tab-separated fields"),
        "{err}"
    );
}

// ---------------------------------------------------------------- raw MovieLens 1M

#[test]
fn movielens_1m_reads_double_colon_files() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "movies.dat",
        b"1::Toy Story (1995)::Animation|Children's|Comedy\n\
          2::City of Lost Children, The (Cit\xe9 des enfants perdus, La) (1995)::Adventure|Sci-Fi\n"
            .as_slice(),
    );
    write(
        d.path(),
        "ratings.dat",
        "1::2::5::978300760\n1::1::3::978300760\n10::1::4::978300000\n",
    );
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.files.format, Format::MovieLens1m);
    let it = ds.catalog.item(1).unwrap();
    assert_eq!(
        it.title,
        "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    );
    assert_eq!(it.year, Some(1995));
    assert_eq!(it.genres, ["Adventure", "Sci-Fi"]);
    assert_eq!(
        ds.catalog
            .title_styled(1, TitleStyle::ArticleFirst)
            .unwrap(),
        "The City of Lost Children (Cité des enfants perdus, La) (1995)"
    );
    assert_eq!(seq(&ds, "1"), ["1", "2"]);
    assert_eq!(ds.interactions.user_ids(), ["1", "10"]);

    write(d.path(), "ratings.dat", "1::2::5\n");
    let err = load_err(d.path());
    assert!(
        err.contains("ratings.dat:1: expected 4 `::`-separated fields"),
        "{err}"
    );
    write(d.path(), "movies.dat", "1::Toy Story (1995)\n");
    let err = load_err(d.path());
    assert!(
        err.contains("movies.dat:1: expected `MovieID::Title::Genres`"),
        "{err}"
    );
}

// ---------------------------------------------------------------- CSV

#[test]
fn csv_handles_quoting_optional_columns_and_bom() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "items.csv",
        "\u{feff}item_id,title,year,genres,director\n\
         10,\"Godfather: Part II, The (1974)\",1974,Crime|Drama,Coppola\n\
         9,\"Say \"\"Anything\"\"\",,,\n\
         a7,\"Two\nLines\",n/a,,\n",
    );
    write(
        d.path(),
        "interactions.csv",
        "user_id,item_id,timestamp,rating\n\
         u1,10,100,5\n\
         u1,9,100,\n\
         u1,a7,50,3.5\n",
    );
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.files.format, Format::Csv);
    let cat = &ds.catalog;
    assert_eq!(
        titles(cat),
        [
            "Godfather: Part II, The (1974)",
            "Say \"Anything\"",
            "Two Lines" // newline inside a quoted title cleaned for prompts
        ]
    );
    let g = cat.item(0).unwrap();
    assert_eq!(g.year, Some(1974));
    assert_eq!(g.genres, ["Crime", "Drama"]);
    assert_eq!(g.attrs["director"], "Coppola");
    assert_eq!(
        cat.title_styled(0, TitleStyle::ArticleFirst).unwrap(),
        "The Godfather: Part II (1974)"
    );
    assert_eq!(cat.item(2).unwrap().attrs["year"], "n/a");
    // "a7" is not an integer: ids compare as strings, so "10" < "9" at the tie
    assert_eq!(seq(&ds, "u1"), ["a7", "10", "9"]);
    let r = ds.interactions.ratings_of(0);
    assert_eq!(r[0], 3.5);
    assert!(r[2].is_nan());
}

#[test]
fn csv_errors_name_file_line_and_problem() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "items.csv", "item_id,title\n1,A\n2,B\n");
    let cases: [(&[u8], &str); 7] = [
        (
            b"user_id,item_id\nu,1\n",
            "interactions.csv:1: missing column `timestamp` (the header has: user_id, item_id)",
        ),
        (
            b"user_id,item_id,timestamp\nu,1,5\nu,2,5.5\n",
            "interactions.csv:3: timestamp `5.5` is not an integer",
        ),
        (
            b"user_id,item_id,timestamp\nu,1,5\nu,2\n",
            "interactions.csv:3: expected 3 comma-separated fields as in the header, found 2",
        ),
        (
            b"user_id,item_id,timestamp\nu,1,5\nu,3,6\n",
            "interactions.csv:3: item id `3` is not in the catalog",
        ),
        (
            b"user_id,item_id,timestamp\nu,1,5\n\"u,2,6\nu,1,7\n",
            "interactions.csv:3: expected 3 comma-separated fields as in the header, found 1 \
             (a field spans lines: is a quote left open?)",
        ),
        (b"", "interactions.csv: the file is empty"),
        (
            b"user_id,item_id,timestamp\nu,1,5\n\xe9,2,6\n",
            "interactions.csv:3: not valid UTF-8",
        ),
    ];
    for (inter, want) in cases {
        write(d.path(), "interactions.csv", inter);
        let err = load_err(d.path());
        assert!(err.contains(want), "want {want:?}, got {err}");
    }
    write(d.path(), "items.csv", "id,title\n1,A\n");
    let err = load_err(d.path());
    assert!(
        err.contains("items.csv:1: missing column `item_id` (the header has: id, title)"),
        "{err}"
    );
}

// ---------------------------------------------------------------- JSONL

#[test]
fn jsonl_accepts_string_and_integer_ids() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "items.jsonl",
        r#"{"item_id": 10, "title": "Ten", "genres": ["A", "B"], "year": 2001, "price": 9.5}

{"item_id": "9", "title": "Nine", "genres": "C|D", "year": "unknown", "tags": ["x"], "note": null}
"#,
    );
    write(
        d.path(),
        "interactions.jsonl",
        r#"{"user_id": 1, "item_id": 10, "timestamp": 7, "rating": 4}
{"user_id": "1", "item_id": "9", "timestamp": 7.0}
"#,
    );
    let ds = load(d.path()).unwrap();
    assert_eq!(ds.files.format, Format::Jsonl);
    let ten = ds.catalog.item(0).unwrap();
    assert_eq!(
        (ten.year, ten.genres.clone()),
        (Some(2001), vec!["A".into(), "B".into()])
    );
    assert_eq!(ten.attrs["price"], "9.5");
    let nine = ds.catalog.item(1).unwrap();
    assert_eq!(nine.genres, ["C", "D"]);
    assert_eq!(nine.attrs["year"], "unknown");
    assert_eq!(nine.attrs["tags"], r#"["x"]"#);
    assert!(!nine.attrs.contains_key("note"));
    // user 1 given as number and as string is one user; numeric tie-break 9 < 10
    assert_eq!(ds.interactions.n_users(), 1);
    assert_eq!(seq(&ds, "1"), ["9", "10"]);
}

#[test]
fn jsonl_errors_name_line() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "items.jsonl",
        "{\"item_id\": 1, \"title\": \"A\"}\n",
    );
    let cases = [
        (
            "{\"user_id\": 1, \"item_id\": 1, \"timestamp\": 1}\n{oops\n",
            "interactions.jsonl:2: invalid JSON",
        ),
        (
            "{\"user_id\": 1, \"item_id\": 1}\n",
            "interactions.jsonl:1: missing key `timestamp`",
        ),
        ("[1, 2]\n", "interactions.jsonl:1: expected a JSON object"),
        (
            "{\"user_id\": 1.5, \"item_id\": 1, \"timestamp\": 1}\n",
            "`user_id` must be a string or an integer, found 1.5",
        ),
        (
            "{\"user_id\": 1, \"item_id\": 1, \"timestamp\": \"soon\"}\n",
            "interactions.jsonl:1: timestamp `soon` is not an integer",
        ),
        ("\n\n", "interactions.jsonl: the file is empty"),
    ];
    for (inter, want) in cases {
        write(d.path(), "interactions.jsonl", inter);
        let err = load_err(d.path());
        assert!(err.contains(want), "want {want:?}, got {err}");
    }
    write(d.path(), "items.jsonl", "{\"item_id\": 1}\n");
    let err = load_err(d.path());
    assert!(err.contains("items.jsonl:1: missing key `title`"), "{err}");
}

// ---------------------------------------------------------------- detection

#[test]
fn detection_reports_missing_ambiguous_and_explicit_formats() {
    let d = tempfile::tempdir().unwrap();
    let err = locate(d.path(), None).unwrap_err().to_string();
    assert!(err.contains("none of the known layouts"), "{err}");
    assert!(err.contains("u.item and u.data"), "{err}");

    let err = locate(&d.path().join("nope"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("palr data fetch ml-100k"), "{err}");

    write(d.path(), "items.csv", "item_id,title\n1,A\n");
    write(
        d.path(),
        "interactions.csv",
        "user_id,item_id,timestamp\nu,1,1\n",
    );
    write(d.path(), "items.jsonl", "{\"item_id\":1,\"title\":\"B\"}\n");
    write(
        d.path(),
        "interactions.jsonl",
        "{\"user_id\":1,\"item_id\":1,\"timestamp\":1}\n",
    );
    let err = locate(d.path(), None).unwrap_err().to_string();
    assert!(err.contains("several layouts match (csv, jsonl)"), "{err}");

    let ds = Dataset::load(
        d.path(),
        &LoadOptions {
            format: Some(Format::Jsonl),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.catalog.title(0), Some("B"));
    let (cat, files) = load_catalog(d.path(), Some(Format::Csv)).unwrap();
    assert_eq!((cat.title(0), files.format), (Some("A"), Format::Csv));

    let err = locate(d.path(), Some(Format::MovieLens1m))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("format ml-1m needs movies.dat and ratings.dat"),
        "{err}"
    );
}

#[test]
fn recbole_prefers_the_stem_named_like_the_directory() {
    let d = recbole_dir();
    let dir = d.path().join("toy");
    write(&dir, "other.item", "item_id:token\ttitle:token_seq\n1\tX\n");
    write(
        &dir,
        "other.inter",
        "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t1\n",
    );
    let files = locate(&dir, None).unwrap();
    assert_eq!(files.items, dir.join("toy.item"));
    fs::remove_file(dir.join("toy.item")).unwrap();
    let files = locate(&dir, None).unwrap();
    assert_eq!(files.items, dir.join("other.item"));
    write(&dir, "third.item", "item_id:token\ttitle:token_seq\n1\tX\n");
    write(
        &dir,
        "third.inter",
        "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t1\n",
    );
    let err = locate(&dir, None).unwrap_err().to_string();
    assert!(
        err.contains("several RecBole data sets (other, third)"),
        "{err}"
    );
}

// ---------------------------------------------------------------- CLI

#[test]
fn cli_stats_prints_counts_and_reports_errors() {
    let d = recbole_dir();
    let bin = env!("CARGO_BIN_EXE_palr");
    let out = std::process::Command::new(bin)
        .args(["data", "stats"])
        .arg(d.path().join("toy"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "format: recbole",
        "items: 4",
        "users: 2",
        "interactions: 5",
        "users with valid/test targets (>= 3 interactions): 1",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    // a name under --data-dir, an explicit bad format
    let out = std::process::Command::new(bin)
        .args(["data", "stats", "toy", "--format", "parquet", "--data-dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown data format `parquet`"), "{stderr}");

    let out = std::process::Command::new(bin)
        .args(["data", "stats", "toy", "--format", "ml-1m", "--data-dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("format ml-1m needs movies.dat"), "{stderr}");
}
