//! Raw GroupLens MovieLens files (layouts from the data sets' README files, GroupLens Research,
//! University of Minnesota).
//!
//! 100k: `u.item` = `movie id | movie title | release date | video release date | IMDb URL |`
//! then one 0/1 flag per genre, genre names and order in `u.genre` (`name|index`; the standard 19
//! are built in for when it is absent); ISO-8859-1. `u.data` = `user id \t item id \t rating \t
//! timestamp`.
//!
//! 1M: `movies.dat` = `MovieID::Title::Genres` (genres `|` separated, year in the title's
//! trailing "(YYYY)"); ISO-8859-1. `ratings.dat` = `UserID::MovieID::Rating::Timestamp`.

use std::path::Path;

use super::{ItemSink, RowSink, parse_rating, parse_timestamp};
use crate::data::catalog::Item;
use crate::data::error::{DataError, Result};
use crate::data::text::{self, Encoding};

/// `u.genre` of MovieLens-100k, used when the file is not beside `u.item`.
const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

fn read_text(path: &Path, enc: Encoding, expected: &str) -> Result<String> {
    let text = text::decode(path, text::read(path)?, enc)?;
    if text::lines(&text).next().is_none() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
            expected: expected.to_string(),
        });
    }
    Ok(text)
}

fn genre_names(u_item: &Path) -> Result<Vec<String>> {
    let path = u_item.with_file_name("u.genre");
    if !path.is_file() {
        return Ok(ML100K_GENRES.map(str::to_string).to_vec());
    }
    let text = read_text(&path, Encoding::Latin1OrUtf8, "`name|index` lines")?;
    let mut names: Vec<Option<String>> = Vec::new();
    for (no, line) in text::lines(&text) {
        let Some((name, idx)) = line.rsplit_once('|') else {
            return Err(DataError::parse(&path, no, "expected `name|index`"));
        };
        let idx: usize = idx.trim().parse().map_err(|_| {
            DataError::parse(&path, no, format!("genre index `{idx}` is not a number"))
        })?;
        if idx >= 64 {
            return Err(DataError::parse(
                &path,
                no,
                format!("genre index {idx} is implausibly large (at most 63)"),
            ));
        }
        if names.len() <= idx {
            names.resize(idx + 1, None);
        }
        if names[idx].replace(name.trim().to_string()).is_some() {
            return Err(DataError::parse(
                &path,
                no,
                format!("genre index {idx} appears twice"),
            ));
        }
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            n.ok_or_else(|| DataError::parse(&path, 0, format!("genre index {i} is missing")))
        })
        .collect()
}

pub(super) fn load_u_item(path: &Path, sink: &mut ItemSink<'_>) -> Result<()> {
    let genres = genre_names(path)?;
    let text = read_text(
        path,
        Encoding::Latin1OrUtf8,
        "`id|title|release date|video release date|IMDb URL|genre flags...` lines",
    )?;
    let n = 5 + genres.len();
    for (no, line) in text::lines(&text) {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != n {
            return Err(DataError::parse(
                path,
                no,
                format!(
                    "expected {n} `|`-separated fields (5 + {} genre flags), found {}",
                    genres.len(),
                    f.len()
                ),
            ));
        }
        let mut item = Item::new(f[0].trim(), f[1]);
        for (key, v) in [
            ("release_date", f[2]),
            ("video_release_date", f[3]),
            ("imdb_url", f[4]),
        ] {
            if !v.trim().is_empty() {
                item.attrs.insert(key.to_string(), v.trim().to_string());
            }
        }
        // "01-Jan-1995" -> 1995
        item.year = f[2]
            .trim()
            .rsplit('-')
            .next()
            .filter(|y| y.len() == 4)
            .and_then(|y| y.parse().ok());
        for (g, flag) in genres.iter().zip(&f[5..]) {
            match flag.trim() {
                "1" => item.genres.push(g.clone()),
                "0" => {}
                other => {
                    return Err(DataError::parse(
                        path,
                        no,
                        format!("genre flag for `{g}` is `{other}`, expected 0 or 1"),
                    ));
                }
            }
        }
        sink.push(no, item)?;
    }
    Ok(())
}

pub(super) fn load_u_data(path: &Path, sink: &mut RowSink<'_>) -> Result<()> {
    let text = read_text(
        path,
        Encoding::Utf8,
        "`user id<TAB>item id<TAB>rating<TAB>timestamp` lines",
    )?;
    for (no, line) in text::lines(&text) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 {
            return Err(DataError::parse(
                path,
                no,
                format!(
                    "expected 4 tab-separated fields (user id, item id, rating, timestamp), found {}",
                    f.len()
                ),
            ));
        }
        let t = parse_timestamp(path, no, f[3])?;
        let r = parse_rating(path, no, f[2])?;
        sink.push((path, no), f[0].trim(), f[1].trim(), t, r)?;
    }
    Ok(())
}

pub(super) fn load_movies_dat(path: &Path, sink: &mut ItemSink<'_>) -> Result<()> {
    let text = read_text(
        path,
        Encoding::Latin1OrUtf8,
        "`MovieID::Title::Genres` lines",
    )?;
    for (no, line) in text::lines(&text) {
        // The title sits between the first and the last "::".
        let (Some((id, rest)), true) = (line.split_once("::"), line.matches("::").count() >= 2)
        else {
            return Err(DataError::parse(
                path,
                no,
                "expected `MovieID::Title::Genres`",
            ));
        };
        let (title, genres) = rest.rsplit_once("::").expect("two separators");
        let mut item = Item::new(id.trim(), title);
        item.year = trailing_year(title.trim());
        item.genres = genres
            .split('|')
            .map(str::trim)
            .filter(|g| !g.is_empty() && *g != "(no genres listed)")
            .map(str::to_string)
            .collect();
        sink.push(no, item)?;
    }
    Ok(())
}

pub(super) fn load_ratings_dat(path: &Path, sink: &mut RowSink<'_>) -> Result<()> {
    let text = read_text(
        path,
        Encoding::Utf8,
        "`UserID::MovieID::Rating::Timestamp` lines",
    )?;
    for (no, line) in text::lines(&text) {
        let f: Vec<&str> = line.split("::").collect();
        if f.len() != 4 {
            return Err(DataError::parse(
                path,
                no,
                format!(
                    "expected 4 `::`-separated fields (UserID, MovieID, Rating, Timestamp), found {}",
                    f.len()
                ),
            ));
        }
        let t = parse_timestamp(path, no, f[3])?;
        let r = parse_rating(path, no, f[2])?;
        sink.push((path, no), f[0].trim(), f[1].trim(), t, r)?;
    }
    Ok(())
}

/// "Toy Story (1995)" -> 1995.
fn trailing_year(title: &str) -> Option<i32> {
    let inner = title.strip_suffix(')')?.rsplit_once('(')?.1;
    (inner.len() == 4 && inner.bytes().all(|b| b.is_ascii_digit()))
        .then(|| inner.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_year_only_from_four_digits_in_final_parens() {
        assert_eq!(trailing_year("Toy Story (1995)"), Some(1995));
        assert_eq!(
            trailing_year("Shanghai Triad (Yao a yao) (1995)"),
            Some(1995)
        );
        assert_eq!(trailing_year("Shanghai Triad (Yao a yao)"), None);
        assert_eq!(trailing_year("Toy Story"), None);
    }
}
