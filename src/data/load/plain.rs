//! Plain CSV (RFC 4180 quoting, via the `csv` crate) and JSON Lines (one object per line,
//! jsonlines.org), both UTF-8.
//!
//! Items: `item_id` and `title` required; `year` (integer, else kept as an attribute), `genres`
//! (`|` separated in CSV; an array or a `|` separated string in JSONL); any other column/key
//! becomes an attribute. Interactions: `user_id`, `item_id`, `timestamp` required, `rating`
//! optional; other columns/keys are ignored. In JSONL, ids may be strings or integers.

use std::path::Path;

use serde_json::{Map, Value};

use super::{ItemSink, RowSink, parse_rating, parse_timestamp, parse_year};
use crate::data::catalog::Item;
use crate::data::error::{DataError, Location, Result};
use crate::data::text::{self, Encoding};

const ITEMS_HINT: &str = "items files need `item_id,title[,year][,genres][,...]`";
const INTER_HINT: &str = "interaction files need `user_id,item_id,timestamp[,rating]`";

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    let msg = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(io) => DataError::io(path, io),
        csv::ErrorKind::Utf8 { err, .. } => DataError::Encoding {
            at: Location::new(path, line),
            detail: format!("in field {}", err.field() + 1),
        },
        _ => DataError::parse(path, line, msg),
    }
}

/// Opens a CSV file, checks it is not empty, returns the reader and its header.
fn open_csv(path: &Path, expected: &str) -> Result<(csv::Reader<std::fs::File>, Vec<String>)> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file);
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
            expected: expected.to_string(),
        });
    }
    Ok((rdr, header))
}

fn require(path: &Path, header: &[String], name: &str, hint: &'static str) -> Result<usize> {
    header
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| DataError::MissingColumn {
            at: Location::new(path, 1),
            column: name.to_string(),
            found: header.join(", "),
            hint,
        })
}

/// Iterates data records with their line numbers, checking the field count.
fn for_each_record(
    path: &Path,
    rdr: &mut csv::Reader<std::fs::File>,
    n_fields: usize,
    mut f: impl FnMut(u64, &csv::StringRecord) -> Result<()>,
) -> Result<()> {
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, e)),
        }
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() == 1 && rec[0].trim().is_empty() {
            continue; // blank line
        }
        if rec.len() != n_fields {
            return Err(DataError::parse(
                path,
                line,
                format!(
                    "expected {n_fields} comma-separated fields as in the header, found {}{}",
                    rec.len(),
                    if rec.iter().any(|f| f.contains('\n')) {
                        " (a field spans lines: is a quote left open?)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        f(line, &rec)?;
    }
}

pub(super) fn load_items_csv(path: &Path, sink: &mut ItemSink<'_>) -> Result<()> {
    let (mut rdr, header) = open_csv(path, "a header line `item_id,title[,...]`")?;
    let id = require(path, &header, "item_id", ITEMS_HINT)?;
    let title = require(path, &header, "title", ITEMS_HINT)?;
    for_each_record(path, &mut rdr, header.len(), |no, rec| {
        let mut item = Item::new(rec[id].trim(), &rec[title]);
        for (k, v) in rec.iter().enumerate() {
            let v = v.trim();
            if k == id || k == title || v.is_empty() {
                continue;
            }
            match header[k].as_str() {
                "year" if parse_year(v).is_some() => item.year = parse_year(v),
                "genres" => item.genres = split_genres(v),
                name => {
                    item.attrs.insert(name.to_string(), v.to_string());
                }
            }
        }
        sink.push(no, item)
    })
}

pub(super) fn load_interactions_csv(path: &Path, sink: &mut RowSink<'_>) -> Result<()> {
    let (mut rdr, header) = open_csv(path, "a header line `user_id,item_id,timestamp[,rating]`")?;
    let user = require(path, &header, "user_id", INTER_HINT)?;
    let item = require(path, &header, "item_id", INTER_HINT)?;
    let ts = require(path, &header, "timestamp", INTER_HINT)?;
    let rating = header.iter().position(|h| h == "rating");
    for_each_record(path, &mut rdr, header.len(), |no, rec| {
        let t = parse_timestamp(path, no, &rec[ts])?;
        let r = match rating {
            Some(k) => parse_rating(path, no, &rec[k])?,
            None => None,
        };
        sink.push((path, no), rec[user].trim(), rec[item].trim(), t, r)
    })
}

fn split_genres(v: &str) -> Vec<String> {
    v.split('|')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads a JSONL file and calls `f` with each non-blank line's number and object.
fn for_each_object(
    path: &Path,
    expected: &str,
    mut f: impl FnMut(u64, Map<String, Value>) -> Result<()>,
) -> Result<()> {
    let text = text::decode(path, text::read(path)?, Encoding::Utf8)?;
    let mut any = false;
    for (no, line) in text::lines(&text) {
        any = true;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| DataError::parse(path, no, format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(DataError::parse(path, no, "expected a JSON object"));
        };
        f(no, obj)?;
    }
    if !any {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
            expected: expected.to_string(),
        });
    }
    Ok(())
}

fn missing_key(path: &Path, no: u64, key: &str, hint: &str) -> DataError {
    DataError::parse(path, no, format!("missing key `{key}` ({hint})"))
}

/// An id: a string, or an integer written as its decimal form.
fn json_id(
    path: &Path,
    no: u64,
    obj: &Map<String, Value>,
    key: &str,
    hint: &str,
) -> Result<String> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(missing_key(path, no, key, hint)),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(other) => Err(DataError::parse(
            path,
            no,
            format!("`{key}` must be a string or an integer, found {other}"),
        )),
    }
}

/// A scalar as text (strings as-is, numbers in JSON form); `None` for null/absent.
fn json_scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

pub(super) fn load_items_jsonl(path: &Path, sink: &mut ItemSink<'_>) -> Result<()> {
    let hint = "item lines need `item_id` and `title`";
    for_each_object(path, "one JSON object per line", |no, obj| {
        let id = json_id(path, no, &obj, "item_id", hint)?;
        let title = match obj.get("title") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => return Err(missing_key(path, no, "title", hint)),
            Some(other) => {
                return Err(DataError::parse(
                    path,
                    no,
                    format!("`title` must be a string, found {other}"),
                ));
            }
        };
        let mut item = Item::new(id, &title);
        for (k, v) in &obj {
            match (k.as_str(), v) {
                ("item_id" | "title", _) | (_, Value::Null) => {}
                ("genres", Value::Array(a)) => {
                    item.genres = a
                        .iter()
                        .map(|g| match g {
                            Value::String(s) => Ok(s.trim().to_string()),
                            other => Err(DataError::parse(
                                path,
                                no,
                                format!("`genres` entries must be strings, found {other}"),
                            )),
                        })
                        .filter(|g| !matches!(g, Ok(s) if s.is_empty()))
                        .collect::<Result<_>>()?;
                }
                ("genres", Value::String(s)) => item.genres = split_genres(s),
                ("year", _)
                    if json_scalar(Some(v))
                        .as_deref()
                        .and_then(parse_year)
                        .is_some() =>
                {
                    item.year = json_scalar(Some(v)).as_deref().and_then(parse_year);
                }
                (name, v) => {
                    if let Some(s) = json_scalar(Some(v)).filter(|s| !s.trim().is_empty()) {
                        item.attrs.insert(name.to_string(), s.trim().to_string());
                    }
                }
            }
        }
        sink.push(no, item)
    })
}

pub(super) fn load_interactions_jsonl(path: &Path, sink: &mut RowSink<'_>) -> Result<()> {
    let hint = "interaction lines need `user_id`, `item_id`, `timestamp`";
    for_each_object(path, "one JSON object per line", |no, obj| {
        let user = json_id(path, no, &obj, "user_id", hint)?;
        let item = json_id(path, no, &obj, "item_id", hint)?;
        let ts = match obj.get("timestamp") {
            None | Some(Value::Null) => return Err(missing_key(path, no, "timestamp", hint)),
            Some(Value::String(s)) => parse_timestamp(path, no, s)?,
            Some(Value::Number(n)) => parse_timestamp(path, no, &n.to_string())?,
            Some(other) => {
                return Err(DataError::parse(
                    path,
                    no,
                    format!("`timestamp` must be a number, found {other}"),
                ));
            }
        };
        let rating = match obj.get("rating") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => parse_rating(path, no, s)?,
            Some(Value::Number(n)) => parse_rating(path, no, &n.to_string())?,
            Some(other) => {
                return Err(DataError::parse(
                    path,
                    no,
                    format!("`rating` must be a number, found {other}"),
                ));
            }
        };
        sink.push((path, no), &user, &item, ts, rating)
    })
}
