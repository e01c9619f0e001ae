//! Masquerade and forward rules: one model ([`rules`]), rendered for iptables or nftables.

pub mod drift;
pub mod exec;
pub mod executor;
pub mod iptables;
mod iptables_state;
mod nft_state;
pub mod nftables;
pub mod rules;
