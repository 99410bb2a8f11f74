//! Transport security and caller authentication of the gRPC listener.
//!
//! - TLS (rustls, TLS 1.2/1.3, ALPN `h2`) from a PEM certificate chain and key
//!   (`[server.tls] cert_file`, `key_file`); with `client_ca_file`, mutual TLS: a client must
//!   present a certificate signed by one of those CAs.
//! - Bearer tokens (`[server.auth] tokens_file`, `tokens_env`): every call but the health
//!   service's needs `authorization: Bearer TOKEN`; a missing or unknown token is
//!   UNAUTHENTICATED. Tokens are compared by their SHA-256 digests in constant time, and a
//!   token's name (`NAME TOKEN` lines) identifies the caller for rate limits and logs.
//! - Scopes: what a token may call (`NAME TOKEN SCOPE,SCOPE` lines): `recommend`
//!   (Recommend, Rank, Retrieve), `read` (ListRetrievers, GetModelInfo, reflection), `admin`
//!   (the admin service). A line without scopes grants `recommend,read`; a call outside the
//!   token's scopes is PERMISSION_DENIED, naming the scope to add.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::config::{AuthSection, TlsSection};
use super::error::StartError;

fn tls_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StartError {
    StartError::Serve(format!("server.tls: {what} {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, "cannot read certificates from", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, "bad certificate in", e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate in", "empty"));
    }
    Ok(certs)
}

/// The TLS acceptor of `[server.tls]`, or `None` when no certificate is configured.
pub fn acceptor(cfg: &TlsSection) -> Result<Option<TlsAcceptor>, StartError> {
    let (cert, key) = match (&cfg.cert_file, &cfg.key_file) {
        (c, k) if c.as_os_str().is_empty() && k.as_os_str().is_empty() => {
            if !cfg.client_ca_file.as_os_str().is_empty() {
                return Err(StartError::Serve(
                    "server.tls.client_ca_file needs cert_file and key_file (mutual TLS is TLS)"
                        .into(),
                ));
            }
            return Ok(None);
        }
        (c, k) if c.as_os_str().is_empty() || k.as_os_str().is_empty() => {
            return Err(StartError::Serve(
                "server.tls needs both cert_file and key_file".into(),
            ));
        }
        (c, k) => (c, k),
    };
    let chain = certs(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, "no private key in", e))?;
    // ring, not aws-lc-rs: no C toolchain or cmake at build time. rustls 0.23.48 deprecates
    // this provider because it has no post-quantum key exchange; the classical groups
    // (X25519, P-256, P-384) it offers are what gRPC clients negotiate today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Serve(format!("server.tls: {e}")))?;
    let builder = if cfg.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&cfg.client_ca_file)? {
            roots
                .add(c)
                .map_err(|e| tls_err(&cfg.client_ca_file, "bad CA certificate in", e))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err(&cfg.client_ca_file, "client CAs from", e))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(cert, "certificate and key of", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// A group of calls a token may be allowed to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `palr.v1.Recommender`'s Recommend, Rank and Retrieve: the calls that cost compute.
    Recommend,
    /// ListRetrievers, GetModelInfo and reflection: what the server is and holds.
    Read,
    /// The admin service (`palr.admin.v1.`): changes to what the server serves.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Recommend, Scope::Read, Scope::Admin];

    /// Its name in token files.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Recommend => "recommend",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The scope a call to the gRPC `path` needs; `None` for paths no scope covers (health,
    /// which needs no token, and unknown routes, which are answered UNIMPLEMENTED).
    pub fn of_path(path: &str) -> Option<Scope> {
        if let Some(m) = path.strip_prefix("/palr.v1.Recommender/") {
            return match m {
                "Recommend" | "Rank" | "Retrieve" => Some(Scope::Recommend),
                "ListRetrievers" | "GetModelInfo" => Some(Scope::Read),
                _ => None,
            };
        }
        if path.starts_with("/grpc.reflection.") {
            return Some(Scope::Read);
        }
        if path.starts_with("/palr.admin.") {
            return Some(Scope::Admin);
        }
        None
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// What a token gets when its line names no scopes: every call but the admin service's.
    pub const DEFAULT: Scopes = Scopes(1 << Scope::Recommend as u8 | 1 << Scope::Read as u8);

    pub fn of(scopes: &[Scope]) -> Self {
        Scopes(scopes.iter().fold(0, |acc, s| acc | s.bit()))
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    /// `a,b` (the token-file form).
    pub fn names(self) -> String {
        Scope::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses `recommend,read` (or `*` for every scope).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Scopes::of(&Scope::ALL));
        }
        let mut set = Scopes(0);
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let s = Scope::ALL
                .into_iter()
                .find(|s| s.name() == word)
                .ok_or_else(|| {
                    format!(
                        "unknown scope {:?} (scopes: recommend, read, admin, or * for all)",
                        crate::util::clip(word)
                    )
                })?;
            set.0 |= s.bit();
        }
        if set.0 == 0 {
            return Err("no scope named (scopes: recommend, read, admin, or * for all)".into());
        }
        Ok(set)
    }
}

/// Who a token belongs to and what it may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name; shared so a call's identity costs no allocation.
    pub name: Arc<str>,
    pub scopes: Scopes,
}

impl Identity {
    /// The PERMISSION_DENIED message for a call to `path` that needs `scope`.
    pub fn denied(&self, path: &str, scope: Scope) -> String {
        format!(
            "token {:?} may not call {}: that needs the scope {:?} and the token has {:?}; add \
             it to the token's line in server.auth.tokens_file (`NAME TOKEN SCOPE,SCOPE`, e.g. \
             `{} <token> {},{}`)",
            crate::util::clip(&self.name),
            crate::util::clip(path.trim_start_matches('/')),
            scope.name(),
            self.scopes.names(),
            crate::util::clip(&self.name),
            self.scopes.names(),
            scope.name(),
        )
    }
}

/// The accepted bearer tokens, as SHA-256 digests with the caller's identity.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    digests: Vec<([u8; 32], Identity)>,
}

/// Why a call was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization: Bearer ...` header.
    Missing,
    /// A token this server does not accept.
    Unknown,
    /// A known token outside its scopes (PERMISSION_DENIED).
    Forbidden,
}

impl AuthFailure {
    /// Every reason, for metrics that start at zero.
    pub const ALL: [AuthFailure; 3] = [
        AuthFailure::Missing,
        AuthFailure::Unknown,
        AuthFailure::Forbidden,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Forbidden => "forbidden",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "this server needs a bearer token: send the metadata `authorization: Bearer TOKEN`"
            }
            AuthFailure::Unknown => "the bearer token is not accepted by this server",
            AuthFailure::Forbidden => "the bearer token may not make this call",
        }
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equal digests, in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// The tokens of `[server.auth]` (file and environment variable); empty = no auth.
    pub fn load(cfg: &AuthSection) -> Result<Self, StartError> {
        let mut t = Tokens::default();
        if !cfg.tokens_file.as_os_str().is_empty() {
            let text = std::fs::read_to_string(&cfg.tokens_file).map_err(|e| {
                StartError::Serve(format!(
                    "server.auth.tokens_file {}: {e}",
                    cfg.tokens_file.display()
                ))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (name, token, scopes) = match fields[..] {
                    [token] => (format!("token{}", n + 1), token, Scopes::DEFAULT),
                    [name, token] => (name.to_owned(), token, Scopes::DEFAULT),
                    [name, token, scopes] => {
                        let scopes = Scopes::parse(scopes).map_err(|e| {
                            StartError::Serve(format!(
                                "server.auth.tokens_file {} line {}: {e}",
                                cfg.tokens_file.display(),
                                n + 1
                            ))
                        })?;
                        (name.to_owned(), token, scopes)
                    }
                    _ => {
                        return Err(StartError::Serve(format!(
                            "server.auth.tokens_file {} line {}: {} fields; a line is \
                             `NAME TOKEN [SCOPE,SCOPE]` (or a bare TOKEN)",
                            cfg.tokens_file.display(),
                            n + 1,
                            fields.len()
                        )));
                    }
                };
                t.add(name, token, scopes, &cfg.tokens_file)?;
            }
        }
        if !cfg.tokens_env.is_empty() {
            let value = std::env::var(&cfg.tokens_env).map_err(|_| {
                StartError::Serve(format!(
                    "server.auth.tokens_env = {:?} but that variable is not set",
                    cfg.tokens_env
                ))
            })?;
            for (i, token) in value.split(',').map(str::trim).enumerate() {
                if !token.is_empty() {
                    t.add(
                        format!("{}#{}", cfg.tokens_env, i + 1),
                        token,
                        Scopes::DEFAULT,
                        Path::new("env"),
                    )?;
                }
            }
        }
        Ok(t)
    }

    fn add(
        &mut self,
        name: String,
        token: &str,
        scopes: Scopes,
        from: &Path,
    ) -> Result<(), StartError> {
        if token.len() < 16 {
            return Err(StartError::Serve(format!(
                "server.auth: token {name:?} from {} is {} bytes; use at least 16 random bytes",
                from.display(),
                token.len()
            )));
        }
        let name = name.into();
        self.digests
            .push((digest(token.as_bytes()), Identity { name, scopes }));
        Ok(())
    }

    /// Tokens from `(name, token)` pairs with the default scopes (tests, embedding).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Tokens {
            digests: pairs
                .iter()
                .map(|(n, t)| {
                    let id = Identity {
                        name: Arc::from(*n),
                        scopes: Scopes::DEFAULT,
                    };
                    (digest(t.as_bytes()), id)
                })
                .collect(),
        }
    }

    /// Whether some token may call the admin service (which is off without one).
    pub fn any_with(&self, scope: Scope) -> bool {
        self.digests.iter().any(|(_, id)| id.scopes.contains(scope))
    }

    /// Whether token auth is on.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// The caller for an `authorization` header value.
    pub fn check(&self, header: Option<&[u8]>) -> Result<&Identity, AuthFailure> {
        let value = header.ok_or(AuthFailure::Missing)?;
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(AuthFailure::Missing)?;
        let d = digest(token);
        // Compare against every token, so the time says nothing about which one matched.
        let mut found = None;
        for (want, id) in &self.digests {
            if same(&d, want) {
                found = Some(id);
            }
        }
        found.ok_or(AuthFailure::Unknown)
    }
}

/// What the listener asks of a connection and a call: TLS (or not) and bearer tokens (or
/// not), from `[server.tls]` and `[server.auth]`. Built before the model loads, so a bad
/// certificate or token file fails the start at once.
#[derive(Clone)]
pub struct Transport {
    /// `None` = plaintext HTTP/2.
    pub tls: Option<TlsAcceptor>,
    /// Empty = no authentication.
    pub tokens: Arc<Tokens>,
    /// "plaintext", "TLS (cert.pem)", "mutual TLS (...)", for the log.
    pub description: String,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("security", &self.description)
            .field("tokens", &self.tokens.digests.len())
            .finish()
    }
}

impl Transport {
    pub fn from_config(server: &super::config::ServerSection) -> Result<Self, StartError> {
        let tls = acceptor(&server.tls)?;
        let tokens = Arc::new(Tokens::load(&server.auth)?);
        let show = |p: &PathBuf| p.display().to_string();
        let description = match (&tls, server.tls.client_ca_file.as_os_str().is_empty()) {
            (None, _) => "plaintext".to_owned(),
            (Some(_), true) => format!("TLS ({})", show(&server.tls.cert_file)),
            (Some(_), false) => format!(
                "mutual TLS ({}, client CAs {})",
                show(&server.tls.cert_file),
                show(&server.tls.client_ca_file)
            ),
        };
        Ok(Self {
            tls,
            tokens,
            description,
        })
    }

    /// Plaintext, no authentication.
    pub fn plaintext() -> Self {
        Self {
            tls: None,
            tokens: Arc::new(Tokens::default()),
            description: "plaintext".into(),
        }
    }

    /// Warns about what would be unsafe beyond this machine: plaintext on a non-loopback
    /// address (and bearer tokens sent in the clear).
    pub fn warn_if_exposed(&self, addr: Option<std::net::SocketAddr>) {
        let Some(addr) = addr else { return };
        if self.tls.is_some() || addr.ip().is_loopback() {
            return;
        }
        if self.tokens.enabled() {
            tracing::warn!(
                %addr,
                "bearer tokens are on but TLS is off: tokens cross the network in the clear \
                 (set server.tls.cert_file and key_file)"
            );
        } else {
            tracing::warn!(
                %addr,
                "serving plaintext without authentication beyond loopback: anyone who can reach \
                 this address can call it (set [server.tls] and [server.auth], or listen on \
                 127.0.0.1 behind a proxy that does)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest_and_name_the_caller() {
        let t = Tokens::from_pairs(&[
            ("svc-a", "aaaaaaaaaaaaaaaaaaaa"),
            ("svc-b", "bbbbbbbbbbbbbbbbbbbb"),
        ]);
        assert!(t.enabled());
        assert_eq!(
            t.check(Some(b"Bearer bbbbbbbbbbbbbbbbbbbb"))
                .map(|id| &*id.name),
            Ok("svc-b")
        );
        assert_eq!(t.check(Some(b"Bearer nope")), Err(AuthFailure::Unknown));
        assert_eq!(t.check(Some(b"Basic xyz")), Err(AuthFailure::Missing));
        assert_eq!(t.check(None), Err(AuthFailure::Missing));
        assert!(!Tokens::default().enabled());
    }

    #[test]
    fn token_files_are_read_and_short_tokens_refused() {
        let dir = std::env::temp_dir().join(format!("palr-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(
            &f,
            "# callers\nrecsys 0123456789abcdef0123\n\nfedcba9876543210fedc\n",
        )
        .unwrap();
        let cfg = AuthSection {
            tokens_file: f.clone(),
            tokens_env: String::new(),
        };
        let t = Tokens::load(&cfg).unwrap();
        let name = |h: &[u8]| t.check(Some(h)).map(|id| id.name.to_string());
        assert_eq!(name(b"Bearer 0123456789abcdef0123"), Ok("recsys".into()));
        assert_eq!(name(b"Bearer fedcba9876543210fedc"), Ok("token4".into()));
        std::fs::write(&f, "short\n").unwrap();
        let e = Tokens::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scopes_are_read_from_token_lines_and_name_what_to_add() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        let cfg = AuthSection {
            tokens_file: f.clone(),
            tokens_env: String::new(),
        };
        std::fs::write(
            &f,
            "svc 0123456789abcdef0123\ndash fedcba9876543210fedc read\n\
             ops aaaaaaaaaaaaaaaaaaaa admin,read\nroot bbbbbbbbbbbbbbbbbbbb *\n",
        )
        .unwrap();
        let t = Tokens::load(&cfg).unwrap();
        let scopes = |tok: &str| {
            t.check(Some(format!("Bearer {tok}").as_bytes()))
                .unwrap()
                .scopes
        };
        assert_eq!(scopes("0123456789abcdef0123"), Scopes::DEFAULT);
        assert_eq!(scopes("fedcba9876543210fedc"), Scopes::of(&[Scope::Read]));
        assert_eq!(
            scopes("aaaaaaaaaaaaaaaaaaaa"),
            Scopes::of(&[Scope::Admin, Scope::Read])
        );
        assert_eq!(scopes("bbbbbbbbbbbbbbbbbbbb"), Scopes::of(&Scope::ALL));
        assert!(!Scopes::DEFAULT.contains(Scope::Admin));
        assert!(t.any_with(Scope::Admin));
        assert!(!Tokens::from_pairs(&[("a", "aaaaaaaaaaaaaaaaaaaa")]).any_with(Scope::Admin));

        assert_eq!(
            Scope::of_path("/palr.v1.Recommender/Recommend"),
            Some(Scope::Recommend)
        );
        assert_eq!(
            Scope::of_path("/palr.v1.Recommender/Retrieve"),
            Some(Scope::Recommend)
        );
        assert_eq!(
            Scope::of_path("/palr.v1.Recommender/GetModelInfo"),
            Some(Scope::Read)
        );
        assert_eq!(
            Scope::of_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some(Scope::Read)
        );
        assert_eq!(
            Scope::of_path("/palr.admin.v1.Admin/ReloadRetrievers"),
            Some(Scope::Admin)
        );
        assert_eq!(Scope::of_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(Scope::of_path("/palr.v1.Recommender/Nope"), None);

        let dash = t.check(Some(b"Bearer fedcba9876543210fedc")).unwrap();
        let m = dash.denied("/palr.v1.Recommender/Recommend", Scope::Recommend);
        assert!(
            m.contains("\"dash\"")
                && m.contains("\"recommend\"")
                && m.contains("dash <token> read,recommend"),
            "{m}"
        );

        for (line, want) in [
            (
                "svc 0123456789abcdef0123 write\n",
                "unknown scope \"write\"",
            ),
            ("svc 0123456789abcdef0123 ,\n", "no scope named"),
            ("a b c d\n", "4 fields"),
        ] {
            std::fs::write(&f, line).unwrap();
            let e = Tokens::load(&cfg).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("line 1"), "{line:?}: {e}");
        }
    }

    #[test]
    fn incomplete_or_unreadable_tls_settings_are_refused_with_the_key_to_fix() {
        let tls = |c: &str, k: &str, ca: &str| TlsSection {
            cert_file: c.into(),
            key_file: k.into(),
            client_ca_file: ca.into(),
        };
        assert!(acceptor(&tls("", "", "")).unwrap().is_none());
        let e = acceptor(&tls("cert.pem", "", ""))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("both cert_file and key_file"), "{e}");
        let e = acceptor(&tls("", "", "ca.pem")).err().unwrap().to_string();
        assert!(e.contains("client_ca_file needs cert_file"), "{e}");
        let e = acceptor(&tls("/nonexistent/cert.pem", "/nonexistent/key.pem", ""))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("server.tls") && e.contains("/nonexistent/cert.pem"),
            "{e}"
        );
        let e = Tokens::load(&AuthSection {
            tokens_file: PathBuf::new(),
            tokens_env: "PALR_TEST_UNSET_TOKENS_VARIABLE".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not set"), "{e}");
    }
}
