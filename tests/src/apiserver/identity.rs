//! The emulator's credentials: a CA, a serving certificate signed by it, and a bearer token.
//! CA key and token persist in the state directory so kubeconfigs written earlier keep working
//! across restarts; the serving certificate is re-issued at each start for the current addresses.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::util;
use super::EmulatorError;

pub const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const TOKEN_FILE: &str = "token";

pub struct Identity {
    pub ca_pem: String,
    ca_key: KeyPair,
    pub token: String,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "trellis-kube-emulator-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> EmulatorError {
    EmulatorError::Credentials {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), EmulatorError> {
    let io = |e: std::io::Error| EmulatorError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

impl Identity {
    /// Reuses the CA and token found in `dir`, or creates them.
    pub fn load_or_create(dir: &Path) -> Result<Self, EmulatorError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let token_path = dir.join(TOKEN_FILE);
        let (ca_pem, ca_key) = if cert_path.exists() && key_path.exists() {
            let read = |p: &PathBuf| {
                fs::read_to_string(p).map_err(|e| EmulatorError::Io {
                    path: p.clone(),
                    source: e,
                })
            };
            let pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| tls_err(&key_path, e))?;
            (pem, key)
        } else {
            let key = KeyPair::generate().map_err(|e| tls_err(&key_path, e))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|e| tls_err(&cert_path, e))?;
            write_private(&key_path, &key.serialize_pem())?;
            let pem = cert.pem();
            fs::write(&cert_path, &pem).map_err(|e| EmulatorError::Io {
                path: cert_path.clone(),
                source: e,
            })?;
            (pem, key)
        };
        let token = match fs::read_to_string(&token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let raw = util::random_bytes::<24>();
                let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
                write_private(&token_path, &t)?;
                t
            }
        };
        Ok(Identity {
            ca_pem,
            ca_key,
            token,
        })
    }

    /// A TLS server configuration whose certificate names every address clients may dial.
    pub fn server_config(
        &self,
        ips: &[IpAddr],
        dns_names: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, EmulatorError> {
        let here = Path::new("serving certificate");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        let mut sans: Vec<SanType> = Vec::new();
        for ip in ips {
            if !ip.is_unspecified() && !sans.contains(&SanType::IpAddress(*ip)) {
                sans.push(SanType::IpAddress(*ip));
            }
        }
        for name in dns_names
            .iter()
            .map(String::as_str)
            .chain(["localhost", "kubernetes"])
        {
            let s = SanType::DnsName(name.try_into().map_err(|e| tls_err(here, e))?);
            if !sans.contains(&s) {
                sans.push(s);
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| tls_err(here, e))?;
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_err(here, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(here, e))?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| tls_err(here, e))?;
        // HTTP/1.1 only: watches stream as chunked responses, which both kubectl and kube-rs speak.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A kubeconfig (YAML) for `server_url`, embedding the CA and the token.
    pub fn kubeconfig(&self, server_url: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: trellis-emulator\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: trellis-admin\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: trellis-emulator\n  context:\n    cluster: trellis-emulator\n    user: trellis-admin\n    namespace: default\n\
             current-context: trellis-emulator\n",
            token = self.token
        )
    }
}

/// Writes a kubeconfig atomically so a reader never sees half a file.
pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<(), EmulatorError> {
    write_private(path, contents)
}
