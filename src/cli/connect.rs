//! The TLS and token flags every gRPC client command shares (`palr recommend`, `palr bench
//! recommend`, `palr eval --addr`, `palr admin`), turned into the library's
//! [`ConnectOptions`].

use std::path::PathBuf;

use crate::service::client::ConnectOptions;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// TLS: PEM CA certificates to verify the server with (an https:// address without it
    /// uses the system's roots).
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Mutual TLS: this client's PEM certificate chain (with --client-key).
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Mutual TLS: this client's PEM private key.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the address's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Bearer token sent with every call (prefer the variable: arguments are visible to
    /// other users of the machine).
    #[arg(long, env = "PALR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ConnectArgs {
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            tls_domain: self.tls_domain.clone(),
            token: self.token.clone(),
        }
    }
}
