//! Structural check of a parsed config against the JSON schema derived from [`crate::schema`]:
//! unknown fields, missing fields, wrong types, out-of-range numbers and malformed values, all
//! reported at once, each at its own key or value.
//!
//! Serde stops at the first error; walking the schema instead lets one pass find every such
//! mistake in the file. The schema is generated from the same types serde fills, so the two
//! cannot disagree about which fields exist.

use serde_json::{Map, Value as Json};

use crate::document::{FieldPath, Node, NodeKind};
use crate::types::check_format;

/// A problem found, before it is given a line and column.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Byte offset in the file.
    pub offset: usize,
    /// The field concerned.
    pub path: FieldPath,
    /// What is wrong.
    pub message: String,
}

/// Checks `node` against `schema` (the root schema, holding `$defs`) and returns every
/// problem found.
pub fn check(root_schema: &Json, node: &Node) -> Vec<Finding> {
    let mut checker = Checker {
        root: root_schema,
        findings: Vec::new(),
    };
    checker.check(root_schema, node, &FieldPath::root());
    checker.findings
}

struct Checker<'s> {
    root: &'s Json,
    findings: Vec<Finding>,
}

impl<'s> Checker<'s> {
    fn report(&mut self, offset: usize, path: &FieldPath, message: String) {
        self.findings.push(Finding {
            offset,
            path: path.clone(),
            message,
        });
    }

    fn resolve(&self, schema: &'s Json) -> &'s Json {
        let mut s = schema;
        // `$ref` chains are short; the bound only guards against a cyclic schema.
        for _ in 0..16 {
            let Some(r) = s.get("$ref").and_then(Json::as_str) else {
                break;
            };
            let name = r.rsplit('/').next().unwrap_or_default();
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(def) => s = def,
                None => break,
            }
        }
        s
    }

    fn check(&mut self, schema: &'s Json, node: &Node, path: &FieldPath) {
        let schema = self.resolve(schema);
        if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")) {
            let branches: Vec<&Json> = branches
                .as_array()
                .map(|b| {
                    b.iter()
                        .filter(|b| !is_null_schema(self.resolve(b)))
                        .collect()
                })
                .unwrap_or_default();
            self.check_branches(&branches, node, path);
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Json::as_array) {
            if !allowed.iter().any(|a| json_matches(a, node)) {
                let list = allowed
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                self.report(
                    node.span.start,
                    path,
                    format!("expected one of {list}, found {}", shown(node)),
                );
            }
            return;
        }
        if let Some(c) = schema.get("const") {
            if !json_matches(c, node) {
                self.report(
                    node.span.start,
                    path,
                    format!("expected {c}, found {}", shown(node)),
                );
            }
            return;
        }
        if !self.check_type(schema, node, path) {
            return;
        }
        match &node.kind {
            NodeKind::String(s) => {
                if let Some(f) = schema.get("format").and_then(Json::as_str)
                    && let Some(Err(e)) = check_format(f, s)
                {
                    self.report(node.span.start, path, e);
                }
            }
            NodeKind::Integer(v) => self.check_range(schema, *v, node, path),
            NodeKind::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &path.index(i));
                    }
                }
            }
            NodeKind::Table(entries) => self.check_table(schema, entries, node, path),
            NodeKind::Float(_) | NodeKind::Boolean(_) | NodeKind::Datetime => {}
        }
    }

    fn check_branches(&mut self, branches: &[&'s Json], node: &Node, path: &FieldPath) {
        if let [only] = branches {
            self.check(only, node, path);
            return;
        }
        let mut first_fit: Option<Vec<Finding>> = None;
        for branch in branches {
            let mut sub = Checker {
                root: self.root,
                findings: Vec::new(),
            };
            sub.check(branch, node, path);
            if sub.findings.is_empty() {
                return;
            }
            let type_fits = sub
                .findings
                .iter()
                .all(|f| !f.message.starts_with("expected "));
            if first_fit.is_none() && type_fits {
                first_fit = Some(sub.findings);
            }
        }
        if let Some(findings) = first_fit {
            self.findings.extend(findings);
            return;
        }
        let consts: Option<Vec<String>> = branches
            .iter()
            .map(|b| self.resolve(b).get("const").map(|c| c.to_string()))
            .collect();
        let message = match consts {
            Some(list) => format!("expected one of {}, found {}", list.join(", "), shown(node)),
            None => format!(
                "found {}, which fits none of the allowed forms",
                shown(node)
            ),
        };
        self.report(node.span.start, path, message);
    }

    /// Reports a type mismatch; returns whether the type fits.
    fn check_type(&mut self, schema: &Json, node: &Node, path: &FieldPath) -> bool {
        let Some(ty) = schema.get("type") else {
            return true;
        };
        let types: Vec<&str> = match ty {
            Json::String(s) => vec![s.as_str()],
            Json::Array(a) => a.iter().filter_map(Json::as_str).collect(),
            _ => return true,
        };
        let fits = types.iter().any(|t| {
            matches!(
                (*t, &node.kind),
                ("string", NodeKind::String(_))
                    | ("integer" | "number", NodeKind::Integer(_))
                    | ("number", NodeKind::Float(_))
                    | ("boolean", NodeKind::Boolean(_))
                    | ("array", NodeKind::Array(_))
                    | ("object", NodeKind::Table(_))
            )
        });
        if !fits {
            let wanted = types
                .iter()
                .filter(|t| **t != "null")
                .map(|t| toml_type_name(t))
                .collect::<Vec<_>>()
                .join(" or ");
            self.report(
                node.span.start,
                path,
                format!("expected {wanted}, found {}", shown(node)),
            );
        }
        fits
    }

    fn check_range(&mut self, schema: &Json, v: i64, node: &Node, path: &FieldPath) {
        let (fmt_min, fmt_max) = match schema.get("format").and_then(Json::as_str) {
            Some("uint8") => (Some(0), Some(i64::from(u8::MAX))),
            Some("uint16") => (Some(0), Some(i64::from(u16::MAX))),
            Some("uint32") => (Some(0), Some(i64::from(u32::MAX))),
            Some("uint64" | "uint") => (Some(0), None),
            _ => (None, None),
        };
        let bound = |key: &str| schema.get(key).and_then(Json::as_f64);
        let min = bound("minimum")
            .map(f64_to_i64)
            .into_iter()
            .chain(fmt_min)
            .max();
        let max = bound("maximum")
            .map(f64_to_i64)
            .into_iter()
            .chain(fmt_max)
            .min();
        let out = min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m);
        if out {
            let rule = match (min, max) {
                (Some(lo), Some(hi)) => format!("must be {lo} to {hi}"),
                (Some(lo), None) => format!("must be at least {lo}"),
                (None, Some(hi)) => format!("must be at most {hi}"),
                (None, None) => unreachable!("out of range needs a bound"),
            };
            self.report(
                node.span.start,
                path,
                format!("{v} is out of range: {rule}"),
            );
        }
    }

    fn check_table(
        &mut self,
        schema: &'s Json,
        entries: &[crate::document::Entry],
        node: &Node,
        path: &FieldPath,
    ) {
        let props = schema.get("properties").and_then(Json::as_object);
        let known_names = || props.into_iter().flat_map(Map::keys).map(String::as_str);
        let closed = schema.get("additionalProperties") == Some(&Json::Bool(false));
        for entry in entries {
            let field_path = path.key(&entry.key);
            match props.and_then(|p| p.get(&entry.key)) {
                Some(field_schema) => self.check(field_schema, &entry.value, &field_path),
                None if closed => {
                    let known = known_names().collect::<Vec<_>>().join(", ");
                    let hint = suggest(&entry.key, known_names())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    self.report(
                        entry.key_span.start,
                        &field_path,
                        format!("unknown field `{}`{hint}; known fields: {known}", entry.key),
                    );
                }
                None => {}
            }
        }
        for required in schema
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = required.as_str() else {
                continue;
            };
            if !entries.iter().any(|e| e.key == name) {
                let message = match path.0.is_empty() {
                    true => format!("missing required field `{name}`"),
                    false => format!("missing required field `{name}` in `{path}`"),
                };
                self.report(node.span.start, &path.key(name), message);
            }
        }
    }
}

fn is_null_schema(s: &Json) -> bool {
    s.get("type").and_then(Json::as_str) == Some("null")
}

fn json_matches(expected: &Json, node: &Node) -> bool {
    match (expected, &node.kind) {
        (Json::String(e), NodeKind::String(s)) => e == s,
        (Json::Bool(e), NodeKind::Boolean(b)) => e == b,
        (Json::Number(e), NodeKind::Integer(i)) => e.as_i64() == Some(*i),
        _ => false,
    }
}

fn shown(node: &Node) -> String {
    match &node.kind {
        NodeKind::String(s) => format!("\"{s}\""),
        NodeKind::Integer(i) => i.to_string(),
        NodeKind::Boolean(b) => b.to_string(),
        other => other.toml_name().to_owned(),
    }
}

fn toml_type_name(json_type: &str) -> &'static str {
    match json_type {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "array" => "an array",
        "object" => "a table",
        _ => "another type",
    }
}

#[allow(clippy::cast_possible_truncation)] // schema bounds are small integers written as floats
fn f64_to_i64(v: f64) -> i64 {
    v as i64
}

/// The known name closest to a misspelt one, if it is close enough to be a likely typo.
fn suggest<'a>(wrong: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (edit_distance(wrong, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("mtus", ["mtu", "name"].into_iter()), Some("mtu"));
        assert_eq!(
            suggest("rx_queue", ["rx_queues", "tx_queues"].into_iter()),
            Some("rx_queues")
        );
        assert_eq!(suggest("zzzzzz", ["mtu", "name"].into_iter()), None);
    }
}
