//! RecBole atomic files (RecBole docs, "Atomic Files"): UTF-8, tab separated, no quoting; the
//! first line is a header of `name:type` tokens with type one of `token`, `token_seq`, `float`,
//! `float_seq`; `*_seq` values are space separated.
//!
//! `.item`: `item_id` (required), a title field (`movie_title`, `title`, `item_title` or
//! `item_name`; required), optional year (`release_year`/`year`) and genres (`class`, `genre`,
//! `genres`, `categories`); every other field becomes an attribute.
//! `.inter`: `user_id`, `item_id`, `timestamp` (required), `rating` (optional); other fields are
//! ignored.

use std::path::Path;

use super::{
    GENRE_FIELDS, ItemSink, RowSink, TITLE_FIELDS, YEAR_FIELDS, parse_rating, parse_timestamp,
    parse_year,
};
use crate::data::catalog::Item;
use crate::data::error::{DataError, Location, Result};
use crate::data::text::{self, Encoding};

const TYPES: [&str; 4] = ["token", "token_seq", "float", "float_seq"];

struct Header {
    names: Vec<String>,
    types: Vec<String>,
}

impl Header {
    fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn find_any(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|n| self.find(n))
    }

    fn require(&self, path: &Path, names: &[&str]) -> Result<usize> {
        self.find_any(names)
            .ok_or_else(|| DataError::MissingColumn {
                at: Location::new(path, 1),
                column: names.join("` or `"),
                found: self.names.join(", "),
                hint: "RecBole headers are tab-separated `name:type` tokens",
            })
    }
}

fn parse_header(path: &Path, line: &str) -> Result<Header> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for tok in line.split('\t') {
        let tok = tok.trim();
        let Some((name, ty)) = tok.split_once(':') else {
            return Err(DataError::parse(
                path,
                1,
                format!("header field `{tok}` is not `name:type` (RecBole atomic file header)"),
            ));
        };
        if !TYPES.contains(&ty) {
            return Err(DataError::parse(
                path,
                1,
                format!(
                    "header field `{tok}` has unknown type `{ty}` (RecBole types: {})",
                    TYPES.join(", ")
                ),
            ));
        }
        names.push(name.to_string());
        types.push(ty.to_string());
    }
    Ok(Header { names, types })
}

/// Reads a file, parses its header with `on_header`, then calls `on_row` with each data line's
/// number and fields (the field count checked against the header).
fn read_table<T>(
    path: &Path,
    expected: &str,
    on_header: impl FnOnce(&Header) -> Result<T>,
    mut on_row: impl FnMut(&T, &Header, u64, &[&str]) -> Result<()>,
) -> Result<()> {
    let text = text::decode(path, text::read(path)?, Encoding::Utf8)?;
    let mut lines = text::lines(&text);
    let Some((first_no, first)) = lines.next() else {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
            expected: expected.to_string(),
        });
    };
    if first_no != 1 {
        return Err(DataError::parse(
            path,
            1,
            "the header must be the first line",
        ));
    }
    let header = parse_header(path, first)?;
    let cols = on_header(&header)?;
    let mut fields: Vec<&str> = Vec::with_capacity(header.names.len());
    for (no, line) in lines {
        fields.clear();
        fields.extend(line.split('\t'));
        if fields.len() != header.names.len() {
            return Err(DataError::parse(
                path,
                no,
                format!(
                    "expected {} tab-separated fields as in the header, found {}",
                    header.names.len(),
                    fields.len()
                ),
            ));
        }
        on_row(&cols, &header, no, &fields)?;
    }
    Ok(())
}

pub(super) fn load_items(path: &Path, sink: &mut ItemSink<'_>) -> Result<()> {
    read_table(
        path,
        "a RecBole header such as `item_id:token\tmovie_title:token_seq`",
        |h| {
            Ok((
                h.require(path, &["item_id"])?,
                h.require(path, &TITLE_FIELDS)?,
                h.find_any(&YEAR_FIELDS),
                h.find_any(&GENRE_FIELDS),
            ))
        },
        |&(id, title, year, genres), h, no, f| {
            let mut item = Item::new(f[id].trim(), f[title]);
            for (k, v) in f.iter().enumerate() {
                let v = v.trim();
                if k == id || k == title || v.is_empty() {
                    continue;
                }
                if Some(k) == year
                    && let Some(y) = parse_year(v)
                {
                    item.year = Some(y);
                } else if Some(k) == genres {
                    item.genres = if h.types[k].ends_with("_seq") {
                        v.split_whitespace().map(str::to_string).collect()
                    } else {
                        vec![v.to_string()]
                    };
                } else {
                    item.attrs.insert(h.names[k].clone(), v.to_string());
                }
            }
            sink.push(no, item)
        },
    )
}

pub(super) fn load_interactions(path: &Path, sink: &mut RowSink<'_>) -> Result<()> {
    read_table(
        path,
        "a RecBole header such as `user_id:token\titem_id:token\trating:float\ttimestamp:float`",
        |h| {
            Ok((
                h.require(path, &["user_id"])?,
                h.require(path, &["item_id"])?,
                h.require(path, &["timestamp"])?,
                h.find("rating"),
            ))
        },
        |&(user, item, ts, rating), _, no, f| {
            let t = parse_timestamp(path, no, f[ts])?;
            let r = match rating {
                Some(k) => parse_rating(path, no, f[k])?,
                None => None,
            };
            sink.push((path, no), f[user].trim(), f[item].trim(), t, r)
        },
    )
}
