//! The item catalog: external ids (strings on the wire) <-> dense `u32` indices, titles for
//! prompts, and optional attributes.
//!
//! Indices are assigned in input order, 0..n. Titles are stored "as in the data" apart from
//! whitespace cleaning (see [`clean_title`]): control characters such as tabs and newlines would
//! break the one-item-per-line prompt, so they become spaces. [`display_title`] is an optional
//! normalisation for display that moves MovieLens's trailing English article to the front
//! ("Godfather: Part II, The (1974)" -> "The Godfather: Part II (1974)").

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::error::{DataError, Result};
use super::ids::IdOrder;

/// One catalog item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// External id, as on the wire.
    pub id: String,
    /// Title as in the data, whitespace-cleaned ([`clean_title`]); never empty.
    pub title: String,
    /// Release year, when the data has one that parses as an integer.
    pub year: Option<i32>,
    /// Genres / categories, in the data's order.
    pub genres: Vec<String>,
    /// Every other attribute the data has, by its field name (empty values are left out).
    pub attrs: BTreeMap<String, String>,
}

impl Item {
    /// An item with only an id and a title (cleaned).
    pub fn new(id: impl Into<String>, title: &str) -> Self {
        Item {
            id: id.into(),
            title: clean_title(title),
            year: None,
            genres: Vec::new(),
            attrs: BTreeMap::new(),
        }
    }
}

/// How to render a title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TitleStyle {
    /// Exactly the stored title (default).
    #[default]
    AsInData,
    /// Trailing ", The" / ", A" / ", An" moved to the front; see [`display_title`].
    ArticleFirst,
}

/// Items with dense indices. Immutable once built; build with [`CatalogBuilder`] or
/// [`Catalog::from_items`].
#[derive(Debug, Clone)]
pub struct Catalog {
    items: Vec<Item>,
    index: HashMap<String, u32>,
    id_order: IdOrder,
    /// `id_rank[i]` = position of item `i` when all ids are sorted by `id_order`.
    id_rank: Vec<u32>,
}

impl Catalog {
    /// Builds a catalog from items in index order. Errors on an empty or duplicate id or an empty
    /// title.
    pub fn from_items(items: Vec<Item>) -> Result<Catalog> {
        let mut b = CatalogBuilder::with_capacity(items.len());
        for item in items {
            b.push(item).map_err(|e| match e {
                PushError::Duplicate { id, first, second } => DataError::DuplicateItemId {
                    item_id: id,
                    first,
                    second,
                },
                other => DataError::Invalid {
                    msg: other.to_string(),
                },
            })?;
        }
        Ok(b.build())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Dense index of an external id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn item(&self, index: u32) -> Option<&Item> {
        self.items.get(index as usize)
    }

    pub fn id(&self, index: u32) -> Option<&str> {
        self.item(index).map(|it| it.id.as_str())
    }

    pub fn title(&self, index: u32) -> Option<&str> {
        self.item(index).map(|it| it.title.as_str())
    }

    /// The title rendered in `style`.
    pub fn title_styled(&self, index: u32, style: TitleStyle) -> Option<Cow<'_, str>> {
        let t = self.title(index)?;
        Some(match style {
            TitleStyle::AsInData => Cow::Borrowed(t),
            TitleStyle::ArticleFirst => display_title(t),
        })
    }

    /// All items, in index order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// `(index, item)` pairs in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, &Item)> {
        self.items.iter().enumerate().map(|(i, it)| (i as u32, it))
    }

    /// Whether ids compare as numbers (all ids are integers) or strings.
    pub fn id_order(&self) -> IdOrder {
        self.id_order
    }

    /// Rank of item `index` among all ids sorted by [`Catalog::id_order`]: comparing ranks is
    /// comparing ids. Panics if `index` is out of range (indices come from this catalog).
    pub fn id_rank(&self, index: u32) -> u32 {
        self.id_rank[index as usize]
    }
}

/// Why [`CatalogBuilder::push`] refused an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("empty item id")]
    EmptyId,
    #[error("item `{0}` has an empty title")]
    EmptyTitle(String),
    #[error("duplicate item id `{id}` (positions {first} and {second})")]
    Duplicate { id: String, first: u32, second: u32 },
    #[error("more than u32::MAX items")]
    TooMany,
}

/// Accumulates items, assigning indices in push order.
#[derive(Debug, Default)]
pub struct CatalogBuilder {
    items: Vec<Item>,
    index: HashMap<String, u32>,
}

impl CatalogBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        CatalogBuilder {
            items: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds an item (its title is cleaned again, so callers may pass raw text) and returns its
    /// index.
    pub fn push(&mut self, mut item: Item) -> std::result::Result<u32, PushError> {
        if item.id.is_empty() {
            return Err(PushError::EmptyId);
        }
        item.title = clean_title(&item.title);
        if item.title.is_empty() {
            return Err(PushError::EmptyTitle(item.id));
        }
        let next = u32::try_from(self.items.len()).map_err(|_| PushError::TooMany)?;
        if let Some(&first) = self.index.get(&item.id) {
            return Err(PushError::Duplicate {
                id: item.id,
                first,
                second: next,
            });
        }
        self.index.insert(item.id.clone(), next);
        self.items.push(item);
        Ok(next)
    }

    pub fn build(self) -> Catalog {
        let id_order = IdOrder::detect(self.items.iter().map(|it| it.id.as_str()));
        let mut by_id: Vec<u32> = (0..self.items.len() as u32).collect();
        by_id.sort_by(|&a, &b| {
            id_order.compare(&self.items[a as usize].id, &self.items[b as usize].id)
        });
        let mut id_rank = vec![0u32; self.items.len()];
        for (rank, &i) in by_id.iter().enumerate() {
            id_rank[i as usize] = rank as u32;
        }
        Catalog {
            items: self.items,
            index: self.index,
            id_order,
            id_rank,
        }
    }
}

/// Whitespace cleaning applied to every stored title: trims, and turns every run of whitespace or
/// control characters into one space. Nothing else changes.
pub fn clean_title(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut pending_space = false;
    for c in raw.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

const ARTICLES: [&str; 3] = ["The", "A", "An"];

/// Display normalisation of MovieLens-style titles: a trailing ", The" / ", A" / ", An" moves to
/// the front. The article is looked for at the end of the main title, before any trailing
/// parenthesised groups (year, alternative title); each such group is normalised the same way.
///
/// "Godfather: Part II, The (1974)" -> "The Godfather: Part II (1974)";
/// "City of Lost Children, The (Cité des enfants perdus, La) (1995)" ->
/// "The City of Lost Children (Cité des enfants perdus, La) (1995)". Only the three English
/// articles move; "Misérables, Les" stays (a foreign-article list would misfire on titles
/// where the last word after a comma is an ordinary word).
pub fn display_title(title: &str) -> Cow<'_, str> {
    let (core, groups) = split_trailing_groups(title);
    let mut changed = false;
    let mut out = String::with_capacity(title.len() + 1);
    let core_norm = move_article(core);
    changed |= matches!(core_norm, Cow::Owned(_));
    out.push_str(&core_norm);
    for g in groups {
        let inner_norm = move_article(g);
        changed |= matches!(inner_norm, Cow::Owned(_));
        out.push_str(" (");
        out.push_str(&inner_norm);
        out.push(')');
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(title)
    }
}

/// "X, The" -> "The X" (exact-case article, non-empty X).
fn move_article(s: &str) -> Cow<'_, str> {
    for art in ARTICLES {
        if let Some(head) = s.strip_suffix(art).and_then(|h| h.strip_suffix(", ")) {
            let head = head.trim_end();
            if !head.is_empty() {
                return Cow::Owned(format!("{art} {head}"));
            }
        }
    }
    Cow::Borrowed(s)
}

/// Splits "Core (g1) (g2)" into ("Core", ["g1", "g2"]). Only balanced groups at the very end,
/// each preceded by a space, count; anything else leaves the title whole.
fn split_trailing_groups(title: &str) -> (&str, Vec<&str>) {
    let mut groups = Vec::new();
    let mut rest = title;
    while rest.ends_with(')') {
        // Find the '(' that balances the final ')'.
        let bytes = rest.as_bytes();
        let mut depth = 0usize;
        let mut open = None;
        for (i, &b) in bytes.iter().enumerate().rev() {
            match b {
                b')' => depth += 1,
                b'(' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        open = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(open) = open else { break };
        let head = &rest[..open];
        let Some(head) = head.strip_suffix(' ') else {
            break;
        };
        if head.trim().is_empty() {
            break;
        }
        groups.push(&rest[open + 1..rest.len() - 1]);
        rest = head.trim_end();
    }
    groups.reverse();
    (rest, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_title_moves_trailing_english_articles() {
        let cases = [
            (
                "Godfather: Part II, The (1974)",
                "The Godfather: Part II (1974)",
            ),
            ("Usual Suspects, The", "The Usual Suspects"),
            ("Room with a View, A (1986)", "A Room with a View (1986)"),
            (
                "American in Paris, An (1951)",
                "An American in Paris (1951)",
            ),
            (
                "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
                "The City of Lost Children (Cité des enfants perdus, La) (1995)",
            ),
            (
                "Double vie de Véronique, La (Double Life of Veronique, The)",
                "Double vie de Véronique, La (The Double Life of Veronique)",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(display_title(raw), want, "{raw}");
        }
    }

    #[test]
    fn display_title_leaves_other_titles_alone() {
        for t in [
            "Toy Story (1995)",
            "Misérables, Les (1995)",
            "The Matrix (1999)",
            "Shanghai Triad (Yao a yao yao dao waipo qiao)",
            "Theory, Then", // "The" must be a whole word after ", "
            ", The",        // nothing to move it in front of
            "Crumb (1994",  // unbalanced
            "M*A*S*H (1970)",
            "Anna",
        ] {
            assert!(matches!(display_title(t), Cow::Borrowed(_)), "{t}");
            assert_eq!(display_title(t), t);
        }
    }

    #[test]
    fn clean_title_collapses_whitespace_and_controls_only() {
        assert_eq!(clean_title("  Toy\tStory \n(1995)\r"), "Toy Story (1995)");
        assert_eq!(
            clean_title("Godfather: Part II, The"),
            "Godfather: Part II, The"
        );
        assert_eq!(clean_title("a\u{0}b"), "a b");
        assert_eq!(clean_title(" \t "), "");
    }

    #[test]
    fn catalog_lookups_and_id_ranks() {
        let cat = Catalog::from_items(vec![
            Item::new("10", "Ten"),
            Item::new("9", "Nine"),
            Item::new("100", "Hundred, The"),
        ])
        .unwrap();
        assert_eq!(cat.len(), 3);
        assert_eq!(cat.index_of("9"), Some(1));
        assert_eq!(cat.index_of("nope"), None);
        assert_eq!(cat.id(2), Some("100"));
        assert_eq!(cat.title(0), Some("Ten"));
        assert_eq!(cat.item(3), None);
        assert_eq!(cat.id_order(), IdOrder::Numeric);
        // numeric: 9 < 10 < 100
        assert_eq!([cat.id_rank(0), cat.id_rank(1), cat.id_rank(2)], [1, 0, 2]);
        assert_eq!(
            cat.title_styled(2, TitleStyle::ArticleFirst).unwrap(),
            "The Hundred"
        );
        assert_eq!(
            cat.title_styled(2, TitleStyle::AsInData).unwrap(),
            "Hundred, The"
        );
        let ids: Vec<_> = cat.iter().map(|(i, it)| (i, it.id.clone())).collect();
        assert_eq!(ids[1], (1, "9".to_string()));
    }

    #[test]
    fn string_ids_rank_bytewise() {
        let cat = Catalog::from_items(vec![
            Item::new("b", "B"),
            Item::new("10", "X"),
            Item::new("9", "Y"),
        ])
        .unwrap();
        assert_eq!(cat.id_order(), IdOrder::Lexicographic);
        // "10" < "9" < "b"
        assert_eq!([cat.id_rank(0), cat.id_rank(1), cat.id_rank(2)], [2, 0, 1]);
    }

    #[test]
    fn catalog_rejects_duplicates_and_empty_fields() {
        let err = Catalog::from_items(vec![Item::new("1", "A"), Item::new("1", "B")]).unwrap_err();
        assert!(
            matches!(err, DataError::DuplicateItemId { ref item_id, first: 0, second: 1 } if item_id == "1"),
            "{err}"
        );
        let err = Catalog::from_items(vec![Item::new("", "A")]).unwrap_err();
        assert!(err.to_string().contains("empty item id"), "{err}");
        let err = Catalog::from_items(vec![Item::new("1", " \n ")]).unwrap_err();
        assert!(err.to_string().contains("empty title"), "{err}");
    }
}
