//! NetworkPolicy, enforced in nftables by the agent (off unless net-conf.json says
//! `"NetworkPolicy": {"Enabled": true}` or `--network-policy=true`).
//!
//! Pure, unit-tested without root: [`api_json`], [`selector`] and [`policy`] (the API's
//! objects, parsed strictly), [`inputs`] (what of Pods and Namespaces matters), [`ranges`] (address
//! intervals, ipBlock minus except), [`compile`] (everything in, the table out), [`ruleset`]
//! (the table as data: the diff as one nft transaction, and the listing read back).
//! With side effects: [`watch`] (the three watches into the [`store`]), [`kernel`] (the table
//! read back, changed, replaced, removed), [`report`] (Events on policies that cannot be
//! enforced) and [`controller`] (turning it on and off, the loop). [`stats`] is what `/metrics` and `status`
//! show. docs/NETWORK-POLICY.md describes the rules for an operator.

pub mod api_json;
pub mod compile;
pub mod controller;
pub mod inputs;
pub mod kernel;
pub mod policy;
pub mod ranges;
pub mod report;
pub mod ruleset;
pub mod selector;
pub mod stats;
pub mod store;
pub mod watch;
