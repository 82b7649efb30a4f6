//! The node inventory a PXE tree is built from: which config each MAC boots with, one
//! `[[node]]` table per node (`mac`, and `config`, a path relative to the inventory file).
//! Unknown keys and malformed MACs are errors at their line and column.

use std::path::PathBuf;

use serde::Deserialize;

use crate::document::{Diagnostic, FieldPath, SourceFile};
use crate::types::MacAddress;

/// The inventory file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<InventoryNode>,
}

/// One node of the inventory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryNode {
    /// MAC address of the NIC the node boots from.
    pub mac: MacAddress,
    /// Its config file, relative to the inventory file.
    pub config: PathBuf,
}

impl Inventory {
    /// Parses the inventory in `src`; a problem is named at its line and column.
    pub fn parse(src: &SourceFile) -> Result<Self, Diagnostic> {
        toml::from_str(&src.text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            src.diagnostic(at, FieldPath::root(), e.message().to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse_and_problems_are_named_at_their_line() {
        let ok = SourceFile::new(
            "inventory.toml",
            "[[node]]\nmac = \"52:54:00:00:0a:02\"\nconfig = \"a.toml\"\n\n[[node]]\nmac = \"52:54:00:00:0b:02\"\nconfig = \"b.toml\"\n",
        );
        let inv = Inventory::parse(&ok).unwrap();
        assert_eq!(inv.nodes.len(), 2);
        assert_eq!(inv.nodes[1].config, PathBuf::from("b.toml"));
        let bad = SourceFile::new(
            "inventory.toml",
            "[[node]]\nmac = \"52:54:00:00:0a:02\"\nconfig = \"a.toml\"\ncolour = \"red\"\n",
        );
        let d = Inventory::parse(&bad).unwrap_err().to_string();
        assert!(d.starts_with("inventory.toml:4:"), "{d}");
        assert!(d.contains("colour"), "{d}");
    }
}
