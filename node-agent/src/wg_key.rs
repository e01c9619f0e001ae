//! WireGuard keys: Curve25519 keys of 32 bytes, written in standard base64 (44 characters) as
//! `wg` and flannel write them. Ground floor: imports nothing from the crate.
//!
//! A [`WgKey`] is public (a peer's identity, printed freely); a [`WgSecret`] is a private or
//! preshared key and never printed: its `Debug` hides it, and it has no `Display`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Bytes in a WireGuard key.
pub const KEY_LEN: usize = 32;

/// A text is not a WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WireGuard key (32 bytes in base64, 44 characters like `wg genkey` prints): {0}")]
pub struct BadKey(String);

fn decode(text: &str) -> Result<[u8; KEY_LEN], BadKey> {
    let text = text.trim();
    if text.len() != 44 {
        return Err(BadKey(format!("{} characters", text.len())));
    }
    let bytes = STANDARD.decode(text).map_err(|e| BadKey(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| BadKey(format!("{} bytes", b.len())))
}

/// A public key: what a node advertises and peers are known by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WgKey(pub [u8; KEY_LEN]);

impl WgKey {
    /// The all-zero key the kernel uses for "none"; never a real public key.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; KEY_LEN]
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl FromStr for WgKey {
    type Err = BadKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode(s).map(WgKey)
    }
}

/// A private or preshared key. Compared in constant time is not needed here (it is never
/// compared with attacker input, only with what the kernel holds), but it is never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WgSecret(pub [u8; KEY_LEN]);

impl WgSecret {
    /// A fresh private key from the OS's random source, clamped as Curve25519 wants
    /// (what `wg genkey` does).
    pub fn generate() -> Result<WgSecret, getrandom::Error> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k)?;
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        Ok(WgSecret(k))
    }

    /// The public key of this private key (`wg pubkey`).
    pub fn public_key(&self) -> WgKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        WgKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The base64 text, for the key file only.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parse the base64 text of a key file or of net-conf.json's `PSK`.
    pub fn parse(text: &str) -> Result<WgSecret, BadKey> {
        decode(text).map(WgSecret)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; KEY_LEN]
    }
}

/// A private key with its public key, computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgKeyPair {
    pub private: WgSecret,
    pub public: WgKey,
}

impl WgKeyPair {
    /// The key clamped as the kernel stores it (a key file need not hold a clamped key:
    /// `openssl rand -base64 32` does not make one), so that it compares equal to what the
    /// kernel reports; clamping does not change the public key.
    pub fn new(private: WgSecret) -> WgKeyPair {
        let mut k = private.0;
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        let private = WgSecret(k);
        WgKeyPair {
            private,
            public: private.public_key(),
        }
    }
}

impl fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgSecret(hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_wg_pubkey() {
        // RFC 7748 section 6.1: Alice's private key and the public key it gives, in base64.
        let private = WgSecret::parse("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(
            private.public_key().to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let k: WgKey = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
            .parse()
            .unwrap();
        assert_eq!(k.to_string().parse::<WgKey>().unwrap(), k);
        for bad in [
            "",
            "abc",
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
            &"A".repeat(4096),
        ] {
            assert!(bad.parse::<WgKey>().is_err(), "{bad:?}");
        }
        // Surrounding white space (a key file's newline) is allowed.
        assert!(" hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n"
            .parse::<WgKey>()
            .is_ok());
    }

    #[test]
    fn a_pair_holds_the_key_clamped_as_the_kernel_does() {
        // RFC 7748's key is not clamped; the kernel would report it clamped.
        let raw = WgSecret::parse("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        let pair = WgKeyPair::new(raw);
        assert_ne!(pair.private, raw);
        assert_eq!(pair.private.0[0] & 7, 0);
        assert_eq!(pair.private.0[31] & 0xc0, 0x40);
        assert_eq!(
            pair.public,
            raw.public_key(),
            "clamping keeps the public key"
        );
        assert_eq!(WgKeyPair::new(pair.private), pair);
    }

    #[test]
    fn secrets_are_never_printed() {
        let s = WgSecret::generate().unwrap();
        assert_eq!(format!("{s:?}"), "WgSecret(hidden)");
        assert_eq!(s.0[0] & 7, 0, "clamped");
        assert_eq!(s.0[31] & 0xc0, 0x40, "clamped");
        assert_eq!(WgSecret::parse(&s.to_base64()).unwrap(), s);
    }
}
