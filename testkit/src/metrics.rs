//! The Prometheus text format the agent serves on `/metrics`.

use std::collections::HashMap;

/// `name{labels} value` lines, keyed by `name{labels}`; comments and unparsable lines are
/// left out.
pub fn parse(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The value of the first sample named exactly `name` (labels included, if any), e.g.
/// `trellis_peers 2`.
pub fn value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_samples_and_skips_comments() {
        let m = super::parse("# HELP a x\na 1\nb{x=\"y\"} 2.5\nbad\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["a"], 1.0);
        assert_eq!(m["b{x=\"y\"}"], 2.5);
    }

    #[test]
    fn value_is_the_named_sample() {
        let body = "# TYPE ab gauge\nab 3\na 1\n";
        assert_eq!(super::value(body, "a"), Some(1.0));
        assert_eq!(super::value(body, "ab"), Some(3.0));
        assert_eq!(super::value(body, "c"), None);
    }
}
