//! Helpers shared by the fuzz targets: how raw fuzzer bytes become the inputs trellis really
//! receives, and canonical renderings used for round-trip checks.

use std::collections::BTreeMap;

/// An environment block the way `/proc/<pid>/environ` holds it: `KEY=VALUE` entries separated
/// by NUL. Entries that are not UTF-8 are dropped, as `std::env::var` reports them as unset;
/// a later duplicate wins, as with `setenv`.
pub fn environ(data: &[u8]) -> BTreeMap<String, String> {
    data.split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
