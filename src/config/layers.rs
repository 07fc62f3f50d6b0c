//! Reading and layering configuration files, remembering where each key was set.
//!
//! Merging happens on generic TOML tables rather than on typed fragments: "tables merge
//! recursively, scalars and arrays replace" is then one small function that cannot drift from
//! the schema. Each file is still type-checked against the fragment schema on its own first, so
//! an error carries that file's line and column.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::fragments::Fragment;
use super::{ConfigError, DROP_IN_DIR, Origin};

/// The merged configuration so far and the origin of each key in it.
#[derive(Debug, Default)]
pub(super) struct Layers {
    merged: toml::Table,
    origins: Origins,
}

impl Layers {
    /// Reads `main` (a missing file is an error only if `required`), then the `*.toml` files of
    /// the drop-in directory next to it, in lexical order of their names.
    pub(super) fn read(main: &Path, required: bool) -> Result<Self, ConfigError> {
        let mut layers = Self::default();
        match fs::read_to_string(main) {
            Ok(text) => layers.add(main, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    file: main.to_owned(),
                    source,
                });
            }
        }
        let dir = main
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join(DROP_IN_DIR);
        for file in drop_ins(&dir)? {
            let text = fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                file: file.clone(),
                source,
            })?;
            layers.add(&file, &text)?;
        }
        Ok(layers)
    }

    /// Checks one file's text against the schema and layers it over what came before.
    pub(super) fn add(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                // A syntax error: the partial tree the parser recovers usually still tells us
                // which key the broken value belongs to.
                let (partial, _) = DeTable::parse_recoverable(text);
                return Err(parse_error(file, text, &e, Some(partial.get_ref())));
            }
        };
        // The typed fragment is only a schema check here (unknown keys, wrong types) with this
        // file's positions; the merged table is turned into a fragment once, at the end.
        Fragment::deserialize(toml::Deserializer::from(doc.clone()))
            .map_err(|e| parse_error(file, text, &e, Some(doc.get_ref())))?;
        let table = toml::Table::deserialize(toml::Deserializer::from(doc.clone()))
            .map_err(|e| parse_error(file, text, &e, Some(doc.get_ref())))?;
        let recorder = Recorder { file, text };
        recorder.table(&mut self.origins, "", doc.get_ref());
        merge(&mut self.merged, table);
        Ok(())
    }

    /// The merged configuration as a typed fragment, and where each key came from.
    pub(super) fn into_parts(self) -> Result<(Fragment, Origins), ConfigError> {
        // Every file passed the schema on its own and merging keeps each value at the path it
        // was checked at, so this cannot fail; map the error anyway rather than panic.
        let fragment = Fragment::deserialize(self.merged.into_deserializer()).map_err(|e| {
            ConfigError::Parse {
                file: PathBuf::from("<merged configuration>"),
                key: None,
                line: 0,
                column: 0,
                reason: e.message().to_owned(),
            }
        })?;
        Ok((fragment, self.origins))
    }
}

/// The `*.toml` files of `dir` (not hidden ones, not directories), sorted by name. A missing
/// directory has no drop-ins.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_dir_error = |source| ConfigError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_dir_error(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_dir_error)?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        // Dotfiles are editor and package-manager leftovers, as with a shell's `*.toml`.
        if !name_str.ends_with(".toml") || name_str.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `fs::metadata` follows symlinks: a link to a file counts, a directory does not.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(_) => {}
            Err(source) => return Err(ConfigError::Read { file: path, source }),
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Tables merge key by key; anything else (scalars, arrays, arrays of tables) replaces.
fn merge(dst: &mut toml::Table, src: toml::Table) {
    for (key, value) in src {
        match (dst.get_mut(&key), value) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            (_, value) => {
                dst.insert(key, value);
            }
        }
    }
}

/// Key path → the file and position that set it. Paths look like `coap.block_size`,
/// `server[0].lifetime`, `device.reboot_command[1]`.
#[derive(Debug, Default)]
pub(super) struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// Records that `path` was set by `origin`.
    pub(super) fn set(&mut self, path: &str, origin: Origin) {
        self.0.insert(path.to_owned(), origin);
    }

    /// Forgets everything below `path`, which is about to be replaced as a whole.
    pub(super) fn clear_under(&mut self, path: &str) {
        self.0.retain(|key, _| {
            !(key.starts_with(path) && matches!(key.as_bytes().get(path.len()), Some(b'.' | b'[')))
        });
    }

    /// Where `key` was set: the key itself, else its closest recorded parent (an element of an
    /// array that came from a flag has only the array recorded).
    pub(super) fn of(&self, key: &str) -> Option<&Origin> {
        let mut key = key;
        loop {
            if let Some(origin) = self.0.get(key) {
                return Some(origin);
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }
}

/// Records the origin of every key of one file.
struct Recorder<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Recorder<'_> {
    fn origin(&self, span: &Range<usize>) -> Origin {
        Origin::File {
            path: self.file.to_owned(),
            position: Some(line_col(self.text, span.start)),
        }
    }

    fn table(&self, origins: &mut Origins, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            self.value(origins, &path, value);
        }
    }

    fn value(&self, origins: &mut Origins, path: &str, value: &Spanned<DeValue<'_>>) {
        match value.get_ref() {
            DeValue::Table(table) => {
                origins.set(path, self.origin(&value.span()));
                self.table(origins, path, table);
            }
            DeValue::Array(items) => {
                origins.clear_under(path);
                origins.set(path, self.origin(&value.span()));
                for (i, item) in items.iter().enumerate() {
                    self.value(origins, &format!("{path}[{i}]"), item);
                }
            }
            _ => {
                origins.clear_under(path);
                origins.set(path, self.origin(&value.span()));
            }
        }
    }
}

/// `prefix.key`, quoting keys that are not bare TOML keys (only unknown keys can be).
fn join(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// A TOML error with its file, 1-based position and, when `tree` lets us find it, key path.
fn parse_error(
    file: &Path,
    text: &str,
    error: &toml::de::Error,
    tree: Option<&DeTable<'_>>,
) -> ConfigError {
    let span = error.span();
    let (line, column) = span
        .as_ref()
        .map_or((1, 1), |span| line_col(text, span.start));
    let key = match (span, tree) {
        (Some(span), Some(tree)) => locate(tree, span.start),
        _ => None,
    };
    ConfigError::Parse {
        file: file.to_owned(),
        key,
        line,
        column,
        // The parser's messages can span lines ("expected ..."); keep the error on one line.
        reason: error.message().trim().replace('\n', "; "),
    }
}

/// The key path of the innermost key or value whose span contains byte `pos`.
fn locate(tree: &DeTable<'_>, pos: usize) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    let mut consider = |span: Range<usize>, path: &str| {
        if span.contains(&pos) && best.as_ref().is_none_or(|(len, _)| span.len() < *len) {
            best = Some((span.len(), path.to_owned()));
        }
    };
    visit_table(tree, "", &mut consider);
    best.map(|(_, path)| path)
}

fn visit_table(table: &DeTable<'_>, prefix: &str, f: &mut impl FnMut(Range<usize>, &str)) {
    for (key, value) in table.iter() {
        let path = join(prefix, key.get_ref());
        f(key.span(), &path);
        visit_value(value, &path, f);
    }
}

fn visit_value(value: &Spanned<DeValue<'_>>, path: &str, f: &mut impl FnMut(Range<usize>, &str)) {
    f(value.span(), path);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, f),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                visit_value(item, &format!("{path}[{i}]"), f);
            }
        }
        _ => {}
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
