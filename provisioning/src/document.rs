//! A parsed TOML file with the byte span of every key and value, and the diagnostics that
//! point into it as `FILE:LINE:COL: field.path: message`.

use std::fmt;
use std::ops::Range;

use toml_edit::{Item, TableLike, Value};

/// One step of a field path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A key in a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// Where a field is in the config, e.g. `tunnel.peers[1].public_key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Segment>);

impl FieldPath {
    /// The path of the document itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }
    /// This path followed by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_owned()));
        p
    }
    /// This path followed by an index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }
}

/// Builds a [`FieldPath`] from segments: `path!("ports", 1, "mtu")`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut p = $crate::document::FieldPath::root();
        $( p.0.push($crate::document::IntoSegment::into_segment($seg)); )*
        p
    }};
}

/// Conversion used by [`path!`].
pub trait IntoSegment {
    /// The segment for this value.
    fn into_segment(self) -> Segment;
}
impl IntoSegment for &str {
    fn into_segment(self) -> Segment {
        Segment::Key(self.to_owned())
    }
}
impl IntoSegment for usize {
    fn into_segment(self) -> Segment {
        Segment::Index(self)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as the operator gave it (`<stdin>` for standard input).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The field the problem is about.
    pub path: FieldPath,
    /// What is wrong, and where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// A TOML value with its span, in a form the checkers can walk without caring whether a table
/// was written as `[header]`, inline or dotted.
#[derive(Clone, Debug)]
pub struct Node {
    /// Bytes of the value in the file (for a `[header]` table, the header).
    pub span: Range<usize>,
    /// The value.
    pub kind: NodeKind,
}

/// The kinds of TOML value.
#[derive(Clone, Debug)]
pub enum NodeKind {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
    /// A date or time (the config has none).
    Datetime,
    /// An array (of values or of tables).
    Array(Vec<Node>),
    /// A table: entries in file order, each with the span of its key.
    Table(Vec<Entry>),
}

/// One key = value of a table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Bytes of the key in the file.
    pub key_span: Range<usize>,
    /// The value.
    pub value: Node,
}

impl NodeKind {
    /// The TOML name of this kind, for messages.
    pub fn toml_name(&self) -> &'static str {
        match self {
            NodeKind::String(_) => "a string",
            NodeKind::Integer(_) => "an integer",
            NodeKind::Float(_) => "a float",
            NodeKind::Boolean(_) => "a boolean",
            NodeKind::Datetime => "a date-time",
            NodeKind::Array(_) => "an array",
            NodeKind::Table(_) => "a table",
        }
    }
}

impl Node {
    /// The value at `path` below this node, or the deepest node on the way and whether the
    /// whole path was found. Keys point at the key's span when `key_span` is set.
    pub fn lookup(&self, path: &FieldPath) -> (Range<usize>, bool) {
        let mut node = self;
        let mut span = self.span.clone();
        for seg in &path.0 {
            let next = match (seg, &node.kind) {
                (Segment::Key(k), NodeKind::Table(entries)) => entries
                    .iter()
                    .find(|e| &e.key == k)
                    .map(|e| (&e.value, e.key_span.clone())),
                (Segment::Index(i), NodeKind::Array(items)) => {
                    items.get(*i).map(|n| (n, n.span.clone()))
                }
                _ => None,
            };
            match next {
                Some((n, _)) => {
                    node = n;
                    span = n.span.clone();
                }
                None => return (span, false),
            }
        }
        (span, true)
    }
}

/// A config file's text, parsed, with the means to turn spans into line and column.
#[derive(Debug)]
pub struct SourceFile {
    /// The name used in diagnostics.
    pub name: String,
    /// The text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Wraps a file's text.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// Wraps a file's bytes. A file that is not UTF-8 (saved in Latin-1, say) is refused with a
    /// diagnostic at its first byte that is not.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self, Diagnostic> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Self::new(name, text)),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let byte = e.as_bytes().get(at).copied().unwrap_or(0);
                // The text up to `at` is the same in the lossy copy, so lines and columns are.
                let src = Self::new(name, String::from_utf8_lossy(e.as_bytes()).into_owned());
                Err(src.diagnostic(
                    at,
                    FieldPath::root(),
                    format!("not UTF-8 (byte 0x{byte:02X}): save the file as UTF-8"),
                ))
            }
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    /// A diagnostic at a byte offset.
    pub fn diagnostic(&self, offset: usize, path: FieldPath, message: String) -> Diagnostic {
        let (line, column) = self.line_col(offset);
        Diagnostic {
            file: self.name.clone(),
            line,
            column,
            path,
            message,
        }
    }

    /// Parses the text into a spanned tree, or the TOML syntax error as a diagnostic.
    pub fn parse(&self) -> Result<Node, Diagnostic> {
        let doc = toml_edit::Document::parse(self.text.as_str()).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let msg = e.message().trim().to_owned();
            self.diagnostic(at, FieldPath::root(), format!("TOML syntax error: {msg}"))
        })?;
        Ok(table_node(doc.as_table(), 0..0))
    }
}

fn table_node(table: &dyn TableLike, fallback: Range<usize>) -> Node {
    let mut entries = Vec::new();
    for (key, item) in table.iter() {
        let key_span = table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .unwrap_or_else(|| fallback.clone());
        let value = item_node(item, key_span.clone());
        entries.push(Entry {
            key: key.to_owned(),
            key_span,
            value,
        });
    }
    Node {
        span: fallback,
        kind: NodeKind::Table(entries),
    }
}

fn item_node(item: &Item, fallback: Range<usize>) -> Node {
    match item {
        Item::None => Node {
            span: fallback,
            kind: NodeKind::Table(Vec::new()),
        },
        Item::Value(v) => value_node(v, fallback),
        Item::Table(t) => {
            let span = t.span().unwrap_or(fallback);
            table_node(t, span)
        }
        Item::ArrayOfTables(a) => {
            let items = a
                .iter()
                .map(|t| {
                    let span = t.span().unwrap_or_else(|| fallback.clone());
                    table_node(t, span)
                })
                .collect();
            Node {
                span: a.span().unwrap_or(fallback),
                kind: NodeKind::Array(items),
            }
        }
    }
}

fn value_node(v: &Value, fallback: Range<usize>) -> Node {
    let span = v.span().unwrap_or_else(|| fallback.clone());
    let kind = match v {
        Value::String(s) => NodeKind::String(s.value().clone()),
        Value::Integer(i) => NodeKind::Integer(*i.value()),
        Value::Float(f) => NodeKind::Float(*f.value()),
        Value::Boolean(b) => NodeKind::Boolean(*b.value()),
        Value::Datetime(_) => NodeKind::Datetime,
        Value::Array(a) => NodeKind::Array(a.iter().map(|v| value_node(v, span.clone())).collect()),
        Value::InlineTable(t) => return table_node(t, span),
    };
    Node { span, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let f = SourceFile::new("x.toml", "a = 1\nbé = 2\n");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(6), (2, 1));
        // `=` after a two-byte character is the 4th character of line 2.
        assert_eq!(f.line_col(10), (2, 4));
    }

    #[test]
    fn paths_display() {
        assert_eq!(
            path!("tunnel", "peers", 1, "public_key").to_string(),
            "tunnel.peers[1].public_key"
        );
        assert_eq!(FieldPath::root().to_string(), "(document)");
    }

    #[test]
    fn lookup_finds_spans_in_all_table_forms() {
        let text = "[a]\nx = 1\n[[b]]\ny = \"q\"\n[[b]]\ny = \"r\"\nc = { z = true }\n";
        let f = SourceFile::new("t", text);
        let root = f.parse().unwrap();
        let (span, found) = root.lookup(&path!("b", 1, "y"));
        assert!(found);
        assert_eq!(&text[span], "\"r\"");
        let (span, found) = root.lookup(&path!("b", 1, "c", "z"));
        assert!(found);
        assert_eq!(&text[span], "true");
        let (span, found) = root.lookup(&path!("a", "missing"));
        assert!(!found);
        assert_eq!(&text[span], "[a]");
    }

    #[test]
    fn syntax_error_has_position() {
        let f = SourceFile::new("t.toml", "a = 1\nb = = 2\n");
        let d = f.parse().unwrap_err();
        assert_eq!(d.line, 2);
        assert!(d.message.starts_with("TOML syntax error"), "{d}");
    }
}
