//! What `check` finds when the kernel's firewall state differs from trellis's rule set, and
//! what `status` shows as installed. Pure.

use std::fmt;

/// The differences between the installed rules and the wanted ones; empty when in sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub items: Vec<DriftItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftItem {
    /// Where, e.g. `iptables nat FLANNEL-POSTRTG` or `nft inet trellis postrouting`.
    pub place: String,
    pub kind: DriftKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftKind {
    /// Wanted but not installed.
    Missing(String),
    /// Installed in trellis's chains or table but not wanted (a stranger's edit, or left over
    /// from an older rule set).
    Unexpected(String),
    /// Installed more than once (a jump rule appended twice).
    Duplicate { what: String, count: usize },
    /// The wanted rules are all there, in another order (order decides what is masqueraded).
    Misordered,
    /// Present with other settings, e.g. a base chain's hook or priority.
    Differs {
        what: String,
        want: String,
        have: String,
    },
}

impl Drift {
    pub fn is_clean(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn push(&mut self, place: &str, kind: DriftKind) {
        self.items.push(DriftItem {
            place: place.to_string(),
            kind,
        });
    }

    /// Compares two rule sequences of one chain: what is missing, what is unexpected (as
    /// multisets, so a duplicate counts), or, when both hold the same rules, the order.
    pub(crate) fn compare<T: PartialEq + fmt::Display>(
        &mut self,
        place: &str,
        want: &[T],
        have: &[T],
    ) {
        if want == have {
            return;
        }
        let mut unmatched: Vec<Option<&T>> = have.iter().map(Some).collect();
        let mut any = false;
        for w in want {
            match unmatched.iter_mut().find(|h| h.is_some_and(|h| h == w)) {
                Some(slot) => *slot = None,
                None => {
                    any = true;
                    self.push(place, DriftKind::Missing(w.to_string()));
                }
            }
        }
        for h in unmatched.into_iter().flatten() {
            any = true;
            self.push(place, DriftKind::Unexpected(h.to_string()));
        }
        if !any {
            self.push(place, DriftKind::Misordered);
        }
    }
}

impl fmt::Display for DriftItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.place;
        match &self.kind {
            DriftKind::Missing(w) => write!(f, "{p}: missing: {w}"),
            DriftKind::Unexpected(w) => write!(f, "{p}: unexpected: {w}"),
            DriftKind::Duplicate { what, count } => write!(f, "{p}: {count} copies of: {what}"),
            DriftKind::Misordered => write!(f, "{p}: rules out of order"),
            DriftKind::Differs { what, want, have } => {
                write!(f, "{p}: {what} is {have}, want {want}")
            }
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return f.write_str("in sync");
        }
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

/// What trellis has installed, for `trellis-agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The backend and tool, e.g. `iptables v1.8.9 (nf_tables)`.
    pub backend: String,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub title: String,
    /// The installed rules, in the tool's own syntax; empty when nothing is installed.
    pub lines: Vec<String>,
    /// Why the section could not be read, if it could not.
    pub error: Option<String>,
}

impl Section {
    /// A section as reading it went: its lines, or why they could not be read.
    pub fn read<E: fmt::Display>(title: String, lines: Result<Vec<String>, E>) -> Section {
        match lines {
            Ok(lines) => Section {
                title,
                lines,
                error: None,
            },
            Err(e) => Section {
                title,
                lines: Vec::new(),
                error: Some(e.to_string()),
            },
        }
    }
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "firewall: {}", self.backend)?;
        for s in &self.sections {
            writeln!(f, "  {}:", s.title)?;
            if let Some(e) = &s.error {
                writeln!(f, "    cannot read: {e}")?;
            } else if s.lines.is_empty() {
                writeln!(f, "    (nothing installed)")?;
            }
            for l in &s.lines {
                writeln!(f, "    {l}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(want: &[&str], have: &[&str]) -> Drift {
        let mut d = Drift::default();
        d.compare("here", want, have);
        d
    }

    #[test]
    fn equal_sequences_are_in_sync() {
        assert!(cmp(&["a", "b"], &["a", "b"]).is_clean());
        assert_eq!(cmp(&[], &[]).to_string(), "in sync");
    }

    #[test]
    fn reports_missing_and_unexpected() {
        let d = cmp(&["a", "b", "c"], &["a", "x", "c"]);
        assert_eq!(
            d.items.iter().map(|i| i.kind.clone()).collect::<Vec<_>>(),
            vec![
                DriftKind::Missing("b".into()),
                DriftKind::Unexpected("x".into())
            ]
        );
        assert_eq!(d.to_string(), "here: missing: b\nhere: unexpected: x");
    }

    #[test]
    fn a_duplicate_is_unexpected_and_a_flushed_chain_misses_everything() {
        let d = cmp(&["a", "b"], &["a", "b", "b"]);
        assert_eq!(d.items.len(), 1);
        assert_eq!(d.items[0].kind, DriftKind::Unexpected("b".into()));
        assert_eq!(cmp(&["a", "b"], &[]).items.len(), 2);
    }

    #[test]
    fn same_rules_in_another_order_are_misordered() {
        let d = cmp(&["a", "b"], &["b", "a"]);
        assert_eq!(d.items.len(), 1);
        assert_eq!(d.items[0].kind, DriftKind::Misordered);
    }

    #[test]
    fn installed_renders_sections() {
        let i = Installed {
            backend: "nft v1".into(),
            sections: vec![
                Section {
                    title: "a".into(),
                    lines: vec!["rule".into()],
                    error: None,
                },
                Section {
                    title: "b".into(),
                    lines: vec![],
                    error: None,
                },
                Section {
                    title: "c".into(),
                    lines: vec![],
                    error: Some("boom".into()),
                },
            ],
        };
        assert_eq!(
            i.to_string(),
            "firewall: nft v1\n  a:\n    rule\n  b:\n    (nothing installed)\n  c:\n    cannot read: boom\n"
        );
    }
}
