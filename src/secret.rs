//! Credentials: the backend's shared secret, a gateway token, the webhook signing secrets.
//! Their `Debug` names the type and shows nothing of the value, and no `Display` exists, so a
//! credential cannot reach a log line, a reason or `check`'s summary by accident.

use std::fmt;

use base64::Engine as _;

/// A secret string (the backend's shared secret, a gateway token). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// One Standard Webhooks signing secret: the HMAC-SHA256 key, i.e. the base64-decoded bytes after
/// `whsec_`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// Parses a secret as Standard Webhooks writes it: `whsec_` then base64. The error never
    /// echoes the text.
    pub(crate) fn parse(text: &str) -> Result<SigningSecret, String> {
        const WRITE: &str = "write `whsec_` followed by the base64 key, as Standard Webhooks does";
        let base64 = base64::engine::general_purpose::STANDARD;
        match text.strip_prefix("whsec_").map(|key| base64.decode(key)) {
            None => Err(format!(
                "not a Standard Webhooks secret (no `whsec_` prefix); {WRITE}"
            )),
            Some(Ok(key)) if !key.is_empty() => Ok(SigningSecret(key)),
            Some(_) => Err(format!(
                "the key after `whsec_` is not valid non-empty base64; {WRITE}"
            )),
        }
    }

    /// The HMAC key bytes.
    pub(crate) fn key(&self) -> &[u8] {
        &self.0
    }
}

/// `Debug` that names the type and shows nothing of the value.
macro_rules! debug_redacted {
    ($($T:ident),*) => {$(
        impl fmt::Debug for $T {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($T), "(<redacted>)"))
            }
        }
    )*};
}
debug_redacted!(Secret, SigningSecret);
