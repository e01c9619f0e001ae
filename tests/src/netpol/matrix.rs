//! [`Matrix`]: who may reach (expected) or reached (observed) whom, as upstream's
//! `Reachability` truth table. Rows are source pods, columns destination pods; cells may carry
//! a note (e.g. a probe's [`super::probe::ProbeResult::summary`]), printed beside mismatches.
//!
//! The one matrix type of the kit: [`super::cases`] writes expectations with upstream's
//! `Expect*` helpers ([`Matrix::expect_peer`], …), [`super::harness`] fills observations from
//! probes, and [`Matrix::mismatch_report`] prints both as upstream does.

use std::fmt;

use super::model::PodRef;

/// Rows are source pods, columns destination pods; values whether the connection was allowed
/// (expected) or made (observed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    rows: Vec<PodRef>,
    cols: Vec<PodRef>,
    cells: Vec<bool>,
    notes: Vec<Option<String>>,
}

/// Upstream's `Peer`: a namespace and/or pod name; `None` matches any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMatch {
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl PeerMatch {
    pub fn any() -> PeerMatch {
        PeerMatch::default()
    }

    pub fn namespace(namespace: &str) -> PeerMatch {
        PeerMatch {
            namespace: Some(namespace.to_string()),
            pod: None,
        }
    }

    pub fn pod(pod: &PodRef) -> PeerMatch {
        PeerMatch {
            namespace: Some(pod.namespace.clone()),
            pod: Some(pod.name.clone()),
        }
    }

    pub fn matches(&self, pod: &PodRef) -> bool {
        self.namespace.as_ref().is_none_or(|n| *n == pod.namespace)
            && self.pod.as_ref().is_none_or(|p| *p == pod.name)
    }
}

/// One cell where two matrices disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub from: PodRef,
    pub to: PodRef,
    pub expected: bool,
    pub observed: bool,
    /// The observed cell's note (`not probed` for a cell the observation lacks).
    pub note: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |b: bool| if b { "allowed" } else { "denied" };
        write!(
            f,
            "{} -> {}: expected {}, observed {}",
            self.from,
            self.to,
            word(self.expected),
            word(self.observed)
        )?;
        if let Some(n) = &self.note {
            write!(f, " [{n}]")?;
        }
        Ok(())
    }
}

impl Matrix {
    /// Every cell `value`.
    pub fn new(rows: Vec<PodRef>, cols: Vec<PodRef>, value: bool) -> Matrix {
        let n = rows.len() * cols.len();
        Matrix {
            rows,
            cols,
            cells: vec![value; n],
            notes: vec![None; n],
        }
    }

    /// The same pods as rows and columns (upstream's `NewReachability(pods, value)`).
    pub fn square(pods: &[PodRef], value: bool) -> Matrix {
        Matrix::new(pods.to_vec(), pods.to_vec(), value)
    }

    /// The sources.
    pub fn rows(&self) -> &[PodRef] {
        &self.rows
    }

    /// The destinations.
    pub fn cols(&self) -> &[PodRef] {
        &self.cols
    }

    fn index(&self, from: &PodRef, to: &PodRef) -> Option<usize> {
        let r = self.rows.iter().position(|x| x == from)?;
        let c = self.cols.iter().position(|x| x == to)?;
        Some(r * self.cols.len() + c)
    }

    pub fn get(&self, from: &PodRef, to: &PodRef) -> Option<bool> {
        self.index(from, to).map(|i| self.cells[i])
    }

    pub fn get_at(&self, row: usize, col: usize) -> bool {
        self.cells[row * self.cols.len() + col]
    }

    /// Sets one cell; false (and nothing set) if either pod is not in the matrix.
    pub fn set(&mut self, from: &PodRef, to: &PodRef, value: bool) -> bool {
        match self.index(from, to) {
            Some(i) => {
                self.cells[i] = value;
                true
            }
            None => false,
        }
    }

    pub fn set_at(&mut self, row: usize, col: usize, value: bool) {
        let n = self.cols.len();
        self.cells[row * n + col] = value;
    }

    pub fn note(&self, from: &PodRef, to: &PodRef) -> Option<&str> {
        self.index(from, to).and_then(|i| self.notes[i].as_deref())
    }

    pub fn set_note(&mut self, row: usize, col: usize, note: impl Into<String>) {
        let n = self.cols.len();
        self.notes[row * n + col] = Some(note.into());
    }

    /// Upstream's `Expect`.
    ///
    /// # Panics
    /// If a pod is not in the matrix: a test naming a pod it does not have is malformed.
    pub fn expect(&mut self, from: &PodRef, to: &PodRef, value: bool) {
        assert!(
            self.set(from, to, value),
            "{from} -> {to}: not in the matrix"
        );
    }

    /// Upstream's `ExpectPeer`: every cell whose source matches `from` and destination `to`.
    pub fn expect_peer(&mut self, from: &PeerMatch, to: &PeerMatch, value: bool) {
        let n = self.cols.len();
        for (r, src) in self.rows.iter().enumerate() {
            if !from.matches(src) {
                continue;
            }
            for (c, dst) in self.cols.iter().enumerate() {
                if to.matches(dst) {
                    self.cells[r * n + c] = value;
                }
            }
        }
    }

    /// Upstream's `ExpectAllIngress`: everything into `to`.
    pub fn expect_all_ingress(&mut self, to: &PodRef, value: bool) {
        self.expect_peer(&PeerMatch::any(), &PeerMatch::pod(to), value);
    }

    /// Upstream's `ExpectAllEgress`: everything out of `from`.
    pub fn expect_all_egress(&mut self, from: &PodRef, value: bool) {
        self.expect_peer(&PeerMatch::pod(from), &PeerMatch::any(), value);
    }

    /// Upstream's `AllowLoopback`: a pod reaching itself never leaves its network namespace,
    /// so no policy applies.
    pub fn allow_loopback(&mut self) {
        let n = self.cols.len();
        for (r, name) in self.rows.iter().enumerate() {
            if let Some(c) = self.cols.iter().position(|x| x == name) {
                self.cells[r * n + c] = true;
            }
        }
    }

    /// Whether every cell is `value`.
    pub fn all(&self, value: bool) -> bool {
        self.cells.iter().all(|&c| c == value)
    }

    pub fn count(&self, value: bool) -> usize {
        self.cells.iter().filter(|&&c| c == value).count()
    }

    /// How many cells a comparison looks at: all of them, or all but a pod to itself.
    pub fn compared_cells(&self, ignore_loopback: bool) -> usize {
        self.iter()
            .filter(|(from, to, _)| !(ignore_loopback && from == to))
            .count()
    }

    /// Every `(from, to, value)`, row by row.
    pub fn iter(&self) -> impl Iterator<Item = (&PodRef, &PodRef, bool)> + '_ {
        let n = self.cols.len();
        self.cells
            .iter()
            .enumerate()
            .map(move |(i, &v)| (&self.rows[i / n], &self.cols[i % n], v))
    }

    /// `observed`'s cell for this matrix's `(row, col)` and its note; a cell it lacks is the
    /// opposite of this one's, noted `not probed`.
    fn observed_at(&self, observed: &Matrix, row: usize, col: usize) -> (bool, Option<String>) {
        match observed.index(&self.rows[row], &self.cols[col]) {
            Some(i) => (observed.cells[i], observed.notes[i].clone()),
            None => (!self.get_at(row, col), Some("not probed".into())),
        }
    }

    /// Where `observed` differs from `self` (the expectation), row by row; a cell `observed`
    /// lacks always counts. With `ignore_loopback` (upstream's default), a pod to itself never
    /// counts.
    pub fn mismatches(&self, observed: &Matrix, ignore_loopback: bool) -> Vec<Mismatch> {
        let mut out = Vec::new();
        for (r, from) in self.rows.iter().enumerate() {
            for (c, to) in self.cols.iter().enumerate() {
                if ignore_loopback && from == to {
                    continue;
                }
                let expected = self.get_at(r, c);
                let (obs, note) = self.observed_at(observed, r, c);
                if obs != expected {
                    out.push(Mismatch {
                        from: from.clone(),
                        to: to.clone(),
                        expected,
                        observed: obs,
                        note,
                    });
                }
            }
        }
        out
    }

    /// Upstream's truth table: a header of destinations, then a row per source with `.` for
    /// allowed and `X` for denied.
    pub fn truth_table(&self) -> String {
        self.table(|r, c| (if self.get_at(r, c) { "." } else { "X" }).to_string())
    }

    fn table(&self, cell: impl Fn(usize, usize) -> String) -> String {
        let rows: Vec<String> = self.rows.iter().map(ToString::to_string).collect();
        let cols: Vec<String> = self.cols.iter().map(ToString::to_string).collect();
        let w = rows
            .iter()
            .chain(&cols)
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(2);
        let mut s = format!("{:<w$}", "-");
        for c in &cols {
            s.push_str(&format!(" {c:<w$}"));
        }
        s = s.trim_end().to_string();
        s.push('\n');
        for (r, from) in rows.iter().enumerate() {
            let mut line = format!("{from:<w$}");
            for c in 0..cols.len() {
                line.push_str(&format!(" {:<w$}", cell(r, c)));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }

    /// Expected and observed truth tables, the observed one with `!` after every cell that
    /// differs (see [`Matrix::mismatches`]), then a line per mismatch (with the probe's note);
    /// empty when they agree.
    pub fn mismatch_report(&self, observed: &Matrix, title: &str, ignore_loopback: bool) -> String {
        let mm = self.mismatches(observed, ignore_loopback);
        if mm.is_empty() {
            return String::new();
        }
        let marked = self.table(|r, c| {
            let (obs, _) = self.observed_at(observed, r, c);
            let ch = if obs { "." } else { "X" };
            let loopback = self.rows[r] == self.cols[c];
            if obs == self.get_at(r, c) || (ignore_loopback && loopback) {
                ch.to_string()
            } else {
                format!("{ch}!")
            }
        });
        let mut s = format!(
            "{title}: {} of {} cells differ{}\n\nexpected:\n{}\nobserved ('!' marks a mismatch):\n{marked}\n",
            mm.len(),
            self.compared_cells(ignore_loopback),
            if ignore_loopback {
                " (loopback not compared)"
            } else {
                ""
            },
            self.truth_table()
        );
        for m in &mm {
            s.push_str(&format!("{m}\n"));
        }
        s
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.truth_table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(ids: &[(&str, &str)]) -> Vec<PodRef> {
        ids.iter().map(|(ns, p)| PodRef::new(ns, p)).collect()
    }

    #[test]
    fn expectations_follow_upstreams_helpers() {
        let all = pods(&[("x", "a"), ("x", "b"), ("y", "a")]);
        let (xa, xb, ya) = (&all[0], &all[1], &all[2]);
        let mut m = Matrix::square(&all, true);
        m.expect_all_ingress(xa, false);
        assert_eq!(m.get(ya, xa), Some(false));
        assert_eq!(m.get(xa, ya), Some(true));
        m.expect_all_egress(xa, false);
        assert_eq!(m.get(xa, ya), Some(false));
        m.expect(xb, xa, true);
        assert_eq!(m.get(xb, xa), Some(true));
        m.expect_peer(&PeerMatch::namespace("y"), &PeerMatch::any(), false);
        assert_eq!(m.get(ya, xb), Some(false));
        // Column x/a (3), row x/a (2 more), minus x/b -> x/a, plus y/a's row (2 more).
        assert_eq!(m.count(false), 6);
        assert!(!m.set(xa, &PodRef::new("nope", "a"), true));
        m.allow_loopback();
        assert_eq!(m.get(xa, xa), Some(true));
        assert_eq!(m.compared_cells(true), 6);
        assert_eq!(m.compared_cells(false), 9);
    }

    #[test]
    #[should_panic(expected = "not in the matrix")]
    fn expect_on_an_unknown_pod_is_a_malformed_test() {
        let mut m = Matrix::square(&pods(&[("x", "a")]), true);
        m.expect(&PodRef::new("x", "a"), &PodRef::new("x", "z"), false);
    }

    #[test]
    fn mismatches_are_reported_as_truth_tables() {
        let all = pods(&[("x", "a"), ("x", "b"), ("y", "a")]);
        let (xa, ya) = (&all[0], &all[2]);
        let mut expected = Matrix::square(&all, true);
        expected.expect_all_ingress(ya, false);
        expected.allow_loopback();
        assert_eq!(expected.get(xa, ya), Some(false));
        assert_eq!(expected.get(ya, ya), Some(true));
        let mut observed = Matrix::square(&all, true);
        observed.set_note(0, 2, "connected x/b 0.4ms");
        assert_eq!(observed.note(xa, ya), Some("connected x/b 0.4ms"));
        assert_eq!(expected.mismatches(&observed, false).len(), 2);
        let report = expected.mismatch_report(&observed, "TCP/80", false);
        assert!(report.contains("2 of 9 cells differ"), "{report}");
        assert!(
            report.contains("x/a -> y/a: expected denied, observed allowed [connected x/b 0.4ms]"),
            "{report}"
        );
        assert!(report.contains(".!"), "{report}");
        assert!(expected
            .mismatch_report(&expected, "same", false)
            .is_empty());
        // Loopback: y/a -> y/a expected denied, observed allowed, ignored when asked.
        expected.expect(ya, ya, false);
        assert_eq!(expected.mismatches(&observed, false).len(), 3);
        assert_eq!(expected.mismatches(&observed, true).len(), 2);
        let report = expected.mismatch_report(&observed, "TCP/80", true);
        assert!(
            report.contains("2 of 6 cells differ (loopback not compared)"),
            "{report}"
        );
        let denied: Vec<_> = expected.iter().filter(|(_, _, v)| !v).collect();
        assert_eq!(denied[0], (xa, ya, false));
        let table = expected.truth_table();
        assert_eq!(table.lines().next().unwrap(), "-   x/a x/b y/a");
        assert_eq!(table.lines().nth(1).unwrap(), "x/a .   .   X");
    }

    #[test]
    fn cells_the_observation_lacks_always_differ() {
        let all = pods(&[("x", "a"), ("x", "b"), ("x", "c")]);
        let mut expected = Matrix::square(&all, true);
        expected.expect_all_ingress(&all[2], false);
        let smaller = Matrix::square(&all[..1], true);
        // 6 cells not probed (loopback ignored), allowed and denied alike.
        let mm = expected.mismatches(&smaller, true);
        assert_eq!(mm.len(), 6);
        assert!(mm.iter().all(|m| m.note.as_deref() == Some("not probed")));
        assert!(mm.iter().any(|m| !m.expected) && mm.iter().any(|m| m.expected));
    }
}
