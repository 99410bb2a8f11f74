//! Item data across the ABI: the owned tables a host (or a plugin's unit test) builds
//! ([`StrTable`], [`ItemTable`]), and the validated, borrowed view a plugin reads
//! ([`ItemsRef`], [`ItemRef`]).

use std::collections::BTreeSet;

use crate::abi::{NO_YEAR, PalrItems, PalrStr};

/// Owned strings plus their ABI form (an array of [`PalrStr`] pointing into them).
///
/// The host builds one per string column it hands to plugins (user ids, item ids, titles...);
/// the `PalrStr` array stays valid as long as the table lives, wherever the table moves (the
/// strings' heap buffers do not move with it).
pub struct StrTable {
    strings: Vec<String>,
    raw: Vec<PalrStr>,
}

// SAFETY: `raw` only points into `strings`, which is never mutated after construction; the
// table is as shareable as a `Vec<String>`.
unsafe impl Send for StrTable {}
unsafe impl Sync for StrTable {}

impl StrTable {
    /// Takes the strings and builds their ABI array.
    pub fn new(strings: Vec<String>) -> Self {
        let raw = strings.iter().map(|s| PalrStr::borrow(s)).collect();
        Self { strings, raw }
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// The strings.
    pub fn strings(&self) -> &[String] {
        &self.strings
    }

    /// The ABI array (`len()` entries; dangling but unread when empty).
    pub fn raw(&self) -> &[PalrStr] {
        &self.raw
    }
}

impl std::fmt::Debug for StrTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.strings).finish()
    }
}

/// One item as a host describes it to plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFields {
    /// External id (unique, non-empty).
    pub id: String,
    /// Title (non-empty in palr's catalogues).
    pub title: String,
    /// Release year, if known.
    pub year: Option<i32>,
    /// Genres, in the data's order.
    pub genres: Vec<String>,
    /// Other attributes by column name; missing ones are simply absent.
    pub attrs: Vec<(String, String)>,
}

/// The owned catalogue a host hands to plugins ([`PalrItems`]), column by column.
pub struct ItemTable {
    ids: StrTable,
    titles: StrTable,
    years: Vec<i32>,
    genre_offsets: Vec<u32>,
    genres: StrTable,
    attr_names: StrTable,
    attr_values: StrTable,
}

impl std::fmt::Debug for ItemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemTable")
            .field("items", &self.ids.len())
            .field("attrs", &self.attr_names)
            .finish_non_exhaustive()
    }
}

impl ItemTable {
    /// Lays out `items` (index order) as columns. Attribute columns are every name any item
    /// has, sorted; an item without one gets the empty string.
    pub fn new(items: Vec<ItemFields>) -> Result<Self, String> {
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            if it.id.is_empty() {
                return Err(format!("item {i} has an empty id"));
            }
            if !seen.insert(it.id.as_str()) {
                return Err(format!("item id {:?} appears twice", it.id));
            }
        }
        let n_genres: usize = items.iter().map(|it| it.genres.len()).sum();
        if u32::try_from(n_genres).is_err() || u32::try_from(items.len()).is_err() {
            return Err(format!("{} items are more than the ABI holds", items.len()));
        }
        let names: BTreeSet<&str> = items
            .iter()
            .flat_map(|it| it.attrs.iter().map(|(k, _)| k.as_str()))
            .collect();
        let names: Vec<String> = names.into_iter().map(str::to_owned).collect();
        let mut values = Vec::with_capacity(items.len() * names.len());
        let mut genre_offsets = Vec::with_capacity(items.len() + 1);
        genre_offsets.push(0u32);
        let mut genres = Vec::with_capacity(n_genres);
        for it in &items {
            for name in &names {
                let v = it.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                values.push(v.cloned().unwrap_or_default());
            }
            genres.extend(it.genres.iter().cloned());
            genre_offsets.push(genres.len() as u32);
        }
        let years = items.iter().map(|it| it.year.unwrap_or(NO_YEAR)).collect();
        let (ids, titles) = items.into_iter().map(|it| (it.id, it.title)).unzip();
        Ok(Self {
            ids: StrTable::new(ids),
            titles: StrTable::new(titles),
            years,
            genre_offsets,
            genres: StrTable::new(genres),
            attr_names: StrTable::new(names),
            attr_values: StrTable::new(values),
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The item ids, in index order.
    pub fn ids(&self) -> &[String] {
        self.ids.strings()
    }

    /// The ABI form; valid while `self` lives.
    pub fn raw(&self) -> PalrItems {
        PalrItems {
            ids: self.ids.raw().as_ptr(),
            titles: self.titles.raw().as_ptr(),
            years: self.years.as_ptr(),
            genre_offsets: self.genre_offsets.as_ptr(),
            genres: self.genres.raw().as_ptr(),
            n_attrs: self.attr_names.len() as u32,
            attr_names: self.attr_names.raw().as_ptr(),
            attr_values: self.attr_values.raw().as_ptr(),
        }
    }

    /// The borrowed view plugins read (what [`crate::Corpus::with_items`] takes in tests).
    pub fn as_ref(&self) -> ItemsRef<'_> {
        ItemsRef {
            ids: self.ids.raw(),
            titles: self.titles.raw(),
            years: &self.years,
            genre_offsets: &self.genre_offsets,
            genres: self.genres.raw(),
            attr_names: self.attr_names.raw(),
            attr_values: self.attr_values.raw(),
        }
    }
}

/// The catalogue as a plugin sees it: every string checked to be UTF-8 and every offset in
/// range when it was built, so the accessors are infallible.
#[derive(Debug, Clone, Copy)]
pub struct ItemsRef<'a> {
    ids: &'a [PalrStr],
    titles: &'a [PalrStr],
    years: &'a [i32],
    genre_offsets: &'a [u32],
    genres: &'a [PalrStr],
    attr_names: &'a [PalrStr],
    attr_values: &'a [PalrStr],
}

/// # Safety
/// `ptr` is null only for `len == 0`, else valid for reads of `len` elements for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T], String> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(format!("{what} is null but should hold {len} entries"));
    }
    // SAFETY: caller contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Checks that every string of `column` is readable UTF-8.
///
/// # Safety
/// Each `PalrStr` is null with length 0, or valid for reads of `len` bytes for `'a`.
unsafe fn check_strings(column: &[PalrStr], what: &str) -> Result<(), String> {
    for (i, s) in column.iter().enumerate() {
        // SAFETY: caller contract.
        let bytes = unsafe { slice(s.ptr, s.len, what)? };
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(format!("{what}[{i}] is not UTF-8: {e}"));
        }
    }
    Ok(())
}

/// Reads a `PalrStr` of a column that was checked by [`check_strings`].
fn text<'a>(s: &PalrStr) -> &'a str {
    if s.len == 0 {
        return "";
    }
    // SAFETY: only called on strings of an `ItemsRef` / `Corpus` / `Query`, whose constructors
    // checked each one (non-null, readable for `'a`, UTF-8) with `check_strings`, or built them
    // from Rust strings that outlive `'a`.
    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(s.ptr, s.len)) }
}

/// Reads one checked string (for the SDK's other borrowed types).
pub(crate) fn checked_text<'a>(s: &PalrStr) -> &'a str {
    text(s)
}

/// Checks one host string and returns it.
///
/// # Safety
/// As [`check_strings`].
pub(crate) unsafe fn host_str<'a>(s: PalrStr, what: &str) -> Result<&'a str, String> {
    // SAFETY: caller contract.
    unsafe { check_strings(std::slice::from_ref(&s), what)? };
    Ok(text(&s))
}

/// Wraps and checks a host string column of `len` entries.
///
/// # Safety
/// `ptr` as for [`slice`]; each string as for [`check_strings`].
pub(crate) unsafe fn host_strings<'a>(
    ptr: *const PalrStr,
    len: usize,
    what: &str,
) -> Result<&'a [PalrStr], String> {
    // SAFETY: caller contract.
    let column = unsafe { slice(ptr, len, what)? };
    // SAFETY: caller contract.
    unsafe { check_strings(column, what)? };
    Ok(column)
}

impl<'a> ItemsRef<'a> {
    /// Wraps and checks the host's item data for `n_items` items; `None` if `raw.ids` is null
    /// (the host sent no item data).
    ///
    /// # Safety
    /// Every pointer of `raw` is valid for the lengths the ABI gives it, for `'a`.
    pub unsafe fn from_raw(raw: &PalrItems, n_items: u32) -> Result<Option<Self>, String> {
        if raw.ids.is_null() {
            return Ok(None);
        }
        let n = n_items as usize;
        // SAFETY (all blocks): the caller guarantees the ABI lengths.
        let ids = unsafe { host_strings(raw.ids, n, "item ids")? };
        let titles = unsafe { host_strings(raw.titles, n, "item titles")? };
        let years = unsafe { slice(raw.years, n, "item years")? };
        let genre_offsets = unsafe { slice(raw.genre_offsets, n + 1, "item genre offsets")? };
        if genre_offsets.first() != Some(&0) || genre_offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err("item genre offsets must start at 0 and never decrease".into());
        }
        let n_genres = genre_offsets[n] as usize;
        let genres = unsafe { host_strings(raw.genres, n_genres, "item genres")? };
        let n_attrs = raw.n_attrs as usize;
        let attr_names = unsafe { host_strings(raw.attr_names, n_attrs, "attribute names")? };
        let attr_values = unsafe {
            host_strings(
                raw.attr_values,
                n.checked_mul(n_attrs).ok_or("too many attribute values")?,
                "attribute values",
            )?
        };
        for (i, id) in ids.iter().enumerate() {
            if id.len == 0 {
                return Err(format!("item {i} has an empty id"));
            }
        }
        Ok(Some(Self {
            ids,
            titles,
            years,
            genre_offsets,
            genres,
            attr_names,
            attr_values,
        }))
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Item `index`, if in range.
    pub fn get(&self, index: u32) -> Option<ItemRef<'a>> {
        ((index as usize) < self.len()).then_some(ItemRef {
            items: *self,
            i: index as usize,
        })
    }

    /// Every item, in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ItemRef<'a>> + '_ {
        (0..self.len()).map(|i| ItemRef { items: *self, i })
    }

    /// The extra attribute columns' names.
    pub fn attr_names(&self) -> impl ExactSizeIterator<Item = &'a str> + '_ {
        self.attr_names.iter().map(text)
    }
}

/// One item of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct ItemRef<'a> {
    items: ItemsRef<'a>,
    i: usize,
}

impl<'a> ItemRef<'a> {
    /// Its index (what retrieval works with).
    pub fn index(&self) -> u32 {
        self.i as u32
    }

    /// Its external id, as requests and data files write it.
    pub fn id(&self) -> &'a str {
        text(&self.items.ids[self.i])
    }

    /// Its title.
    pub fn title(&self) -> &'a str {
        text(&self.items.titles[self.i])
    }

    /// Its release year, if the data has one.
    pub fn year(&self) -> Option<i32> {
        Some(self.items.years[self.i]).filter(|&y| y != NO_YEAR)
    }

    /// Its genres, in the data's order.
    pub fn genres(&self) -> impl ExactSizeIterator<Item = &'a str> + 'a {
        let o = self.items.genre_offsets;
        self.items.genres[o[self.i] as usize..o[self.i + 1] as usize]
            .iter()
            .map(text)
    }

    /// Its value of attribute `name`, if the data has one (non-empty).
    pub fn attr(&self, name: &str) -> Option<&'a str> {
        let a = self.items.attr_names.iter().position(|n| text(n) == name)?;
        let n_attrs = self.items.attr_names.len();
        Some(text(&self.items.attr_values[self.i * n_attrs + a])).filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ItemTable {
        ItemTable::new(vec![
            ItemFields {
                id: "10".into(),
                title: "Heat".into(),
                year: Some(1995),
                genres: vec!["Action".into(), "Crime".into()],
                attrs: vec![("url".into(), "http://x".into())],
            },
            ItemFields {
                id: "11".into(),
                title: "Up".into(),
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn columns_round_trip_through_the_abi_form() {
        let t = table();
        let raw = t.raw();
        // SAFETY: `raw` points into `t`, alive for the test.
        let items = unsafe { ItemsRef::from_raw(&raw, 2) }.unwrap().unwrap();
        let heat = items.get(0).unwrap();
        assert_eq!(
            (heat.id(), heat.title(), heat.year()),
            ("10", "Heat", Some(1995))
        );
        assert_eq!(heat.genres().collect::<Vec<_>>(), ["Action", "Crime"]);
        assert_eq!(heat.attr("url"), Some("http://x"));
        let up = items.get(1).unwrap();
        assert_eq!((up.id(), up.year(), up.genres().len()), ("11", None, 0));
        assert_eq!(
            up.attr("url"),
            None,
            "missing values are empty, read as None"
        );
        assert_eq!(up.attr("nope"), None);
        assert!(items.get(2).is_none());
        assert_eq!(items.attr_names().collect::<Vec<_>>(), ["url"]);
        // The borrowed form a test builds directly reads the same.
        assert_eq!(t.as_ref().get(1).unwrap().title(), "Up");
    }

    #[test]
    fn broken_host_data_is_refused_with_the_reason() {
        let t = table();
        let mut raw = t.raw();
        let bad = [0xffu8, 0xfe];
        let strs = [PalrStr {
            ptr: bad.as_ptr(),
            len: 2,
        }];
        raw.titles = strs.as_ptr();
        // SAFETY: all pointers valid for 1 item.
        let e = unsafe { ItemsRef::from_raw(&raw, 1) }.unwrap_err();
        assert!(e.contains("item titles[0] is not UTF-8"), "{e}");
        let mut raw = t.raw();
        let offsets = [0u32, 3, 1];
        raw.genre_offsets = offsets.as_ptr();
        // SAFETY: as above, for 2 items.
        let e = unsafe { ItemsRef::from_raw(&raw, 2) }.unwrap_err();
        assert!(e.contains("never decrease"), "{e}");
        let mut raw = t.raw();
        raw.ids = std::ptr::null();
        // SAFETY: null ids means no item data; nothing else is read.
        assert!(unsafe { ItemsRef::from_raw(&raw, 2) }.unwrap().is_none());
        let dup = ItemTable::new(vec![
            ItemFields {
                id: "a".into(),
                ..Default::default()
            },
            ItemFields {
                id: "a".into(),
                ..Default::default()
            },
        ]);
        assert!(dup.unwrap_err().contains("appears twice"));
    }
}
