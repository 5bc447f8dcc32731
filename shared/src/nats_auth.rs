//! How a process authenticates to NATS and whether it speaks TLS, from the environment.
//!
//! Credentials may also ride in `NATS_URL` (`nats://user:pass@host`, `nats://token@host`); these
//! variables keep them out of URLs and add what a URL cannot carry: a `.creds` file (JWT + nkey),
//! an nkey seed, a private CA and a client certificate. At most one way to authenticate may be
//! set. Secrets are held only to be handed to the client: `Debug` never shows them.

use std::fmt;
use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;

use crate::error::ConfigError;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// `NATS_CREDS`: a `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// `NATS_NKEY`: an nkey seed (secret).
    pub nkey_seed: Option<String>,
    /// `NATS_TOKEN` (secret).
    pub token: Option<String>,
    /// `NATS_USER` and `NATS_PASSWORD` (secret).
    pub user_password: Option<(String, String)>,
    /// `NATS_TLS_CA`: a PEM file of the roots that sign the servers' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// `NATS_TLS_CERT` and `NATS_TLS_KEY`: a client certificate (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// `NATS_TLS=required`: refuse a server that does not offer TLS (a `tls://` URL also does).
    pub tls_required: bool,
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match (
            &self.creds_file,
            &self.nkey_seed,
            &self.token,
            &self.user_password,
        ) {
            (Some(p), ..) => format!("creds file {}", p.display()),
            (_, Some(_), ..) => "nkey ***".to_owned(),
            (_, _, Some(_), _) => "token ***".to_owned(),
            (_, _, _, Some((user, _))) => format!("user {user} / ***"),
            _ => "none (or in NATS_URL)".to_owned(),
        };
        f.debug_struct("NatsAuth")
            .field("auth", &method)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client", &self.tls_client.as_ref().map(|(c, _)| c))
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

fn file(var: &'static str, value: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let path = PathBuf::from(v);
    if !Path::new(&path).is_file() {
        return Err(ConfigError {
            var,
            message: format!("{} is not a readable file", path.display()),
        });
    }
    Ok(Some(path))
}

impl NatsAuth {
    /// Reads the `NATS_*` variables through `get` (unset and empty are the same).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let err = |var: &'static str, message: &str| ConfigError {
            var,
            message: message.to_owned(),
        };
        let user_password = match (get("NATS_USER"), get("NATS_PASSWORD")) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => return Err(err("NATS_PASSWORD", "NATS_USER is set without it")),
            (None, Some(_)) => return Err(err("NATS_USER", "NATS_PASSWORD is set without it")),
        };
        let auth = Self {
            creds_file: file("NATS_CREDS", get("NATS_CREDS"))?,
            nkey_seed: get("NATS_NKEY"),
            token: get("NATS_TOKEN"),
            user_password,
            tls_ca_file: file("NATS_TLS_CA", get("NATS_TLS_CA"))?,
            tls_client: match (
                file("NATS_TLS_CERT", get("NATS_TLS_CERT"))?,
                file("NATS_TLS_KEY", get("NATS_TLS_KEY"))?,
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(err(
                        "NATS_TLS_CERT",
                        "NATS_TLS_CERT and NATS_TLS_KEY go together",
                    ));
                }
            },
            tls_required: match get("NATS_TLS").as_deref() {
                None | Some("auto") => false,
                Some("required") => true,
                Some(_) => return Err(err("NATS_TLS", "expected `required` or `auto`")),
            },
        };
        let methods = [
            auth.creds_file.is_some(),
            auth.nkey_seed.is_some(),
            auth.token.is_some(),
            auth.user_password.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(err(
                "NATS_CREDS",
                "set one of NATS_CREDS, NATS_NKEY, NATS_TOKEN or NATS_USER/NATS_PASSWORD",
            ));
        }
        Ok(auth)
    }

    /// Connect options carrying these credentials and TLS settings.
    pub async fn options(&self) -> std::io::Result<ConnectOptions> {
        let mut o = match &self.creds_file {
            Some(path) => ConnectOptions::with_credentials_file(path).await?,
            None => ConnectOptions::new(),
        };
        if let Some(seed) = &self.nkey_seed {
            o = o.nkey(seed.clone());
        }
        if let Some(token) = &self.token {
            o = o.token(token.clone());
        }
        if let Some((user, password)) = &self.user_password {
            o = o.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(o.require_tls(self.tls_required))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn auth(vars: &[(&str, &str)]) -> Result<NatsAuth, ConfigError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        NatsAuth::from_lookup(|k| map.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn one_way_to_authenticate_and_no_secret_shown() {
        assert_eq!(auth(&[]).unwrap(), NatsAuth::default());
        let t = auth(&[("NATS_TOKEN", "s3cret-token")]).unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        let u = auth(&[("NATS_USER", "deposit"), ("NATS_PASSWORD", "hunter2")]).unwrap();
        let shown = format!("{u:?}");
        assert!(
            shown.contains("deposit") && !shown.contains("hunter2"),
            "{shown}"
        );
        let n = auth(&[("NATS_NKEY", "SUAsecretseed")]).unwrap();
        assert!(!format!("{n:?}").contains("SUAsecretseed"));
        let both = auth(&[("NATS_TOKEN", "t"), ("NATS_NKEY", "SUA")]).unwrap_err();
        assert_eq!(both.var, "NATS_CREDS");
        assert_eq!(
            auth(&[("NATS_USER", "u")]).unwrap_err().var,
            "NATS_PASSWORD"
        );
    }

    #[test]
    fn files_must_exist_and_tls_settings_parse() {
        let e = auth(&[("NATS_CREDS", "/nonexistent/user.creds")]).unwrap_err();
        assert_eq!(e.var, "NATS_CREDS");
        assert_eq!(
            auth(&[("NATS_TLS_CA", "/nonexistent/ca.pem")])
                .unwrap_err()
                .var,
            "NATS_TLS_CA"
        );
        let cert = std::env::current_exe().unwrap();
        let cert = cert.to_str().unwrap();
        assert_eq!(
            auth(&[("NATS_TLS_CERT", cert)]).unwrap_err().var,
            "NATS_TLS_CERT"
        );
        assert!(auth(&[("NATS_TLS", "required")]).unwrap().tls_required);
        assert_eq!(auth(&[("NATS_TLS", "yes")]).unwrap_err().var, "NATS_TLS");
    }
}
