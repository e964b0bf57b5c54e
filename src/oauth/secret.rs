//! Client secrets of `[[oauth.introspection_client]]`s: read once at start from a file only
//! the daemon's user can read, held in memory that is wiped when dropped, compared in constant
//! time, and never shown — not by `Debug`, not in an error, not in the audit log.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::config::is_credential_char;
use crate::fs_trust::FsTrust;

/// Shortest secret accepted: 16 bytes of `[A-Za-z0-9-._~]` is at least 95 bits from a good
/// generator (`openssl rand -hex 32` gives 64 characters).
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret accepted, and so the most read from a secret file (plus a final newline).
pub const MAX_SECRET_BYTES: usize = 512;

/// A client secret. Its bytes are wiped on drop and never printed.
pub struct ClientSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(withheld)")
    }
}

impl ClientSecret {
    /// Reads `path`: a regular file owned by the daemon's user with no group or other
    /// permission bits, in a trusted directory (as a private key), holding the secret and at
    /// most one final newline.
    ///
    /// # Errors
    /// The file is not trusted or cannot be read, or the secret breaks a rule; the message
    /// names the file and the rule, never the content.
    pub fn read(what: &'static str, path: &Path) -> Result<Self, String> {
        let file = FsTrust::current()
            .open_private(what, path)
            .map_err(|e| e.to_string())?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_SECRET_BYTES + 2));
        file.take(MAX_SECRET_BYTES as u64 + 3)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{what}: {}: {e}", path.display()))?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Self::from_bytes(bytes)
            .map_err(|why| format!("{what}: {}: the secret {why}", path.display()))
    }

    /// # Errors
    /// Too short, too long, or a character outside `[A-Za-z0-9-._~]` (described, not shown).
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Result<Self, String> {
        if bytes.len() < MIN_SECRET_BYTES || bytes.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (it is {}); generate one with `openssl rand -hex 32`",
                bytes.len()
            ));
        }
        if let Some(at) = bytes.iter().position(|b| !is_credential_char(*b)) {
            return Err(format!(
                "has a character other than letters, digits and -._~ at byte {at} (one line, no spaces); generate one with `openssl rand -hex 32`"
            ));
        }
        Ok(Self(bytes))
    }

    /// Whether `presented` is this secret, in time that depends on neither (both are hashed
    /// first, so not even the length is compared directly).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want: Zeroizing<[u8; 32]> = Zeroizing::new(Sha256::digest(self.0.as_slice()).into());
        let got: Zeroizing<[u8; 32]> = Zeroizing::new(Sha256::digest(presented).into());
        want.as_slice().ct_eq(got.as_slice()).into()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    fn file(dir: &Path, name: &str, content: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn reads_a_private_file_with_one_final_newline() {
        let d = dir();
        let s = ClientSecret::read("secret", &file(d.path(), "a", &format!("{GOOD}\n"), 0o600))
            .unwrap();
        assert!(s.matches(GOOD.as_bytes()));
        assert!(!s.matches(format!("{GOOD}\n").as_bytes()));
        let s = ClientSecret::read(
            "secret",
            &file(d.path(), "b", &format!("{GOOD}\r\n"), 0o400),
        )
        .unwrap();
        assert!(s.matches(GOOD.as_bytes()));
    }

    #[test]
    fn a_file_others_can_read_is_refused_without_showing_it() {
        let d = dir();
        for mode in [0o640, 0o604, 0o660] {
            let p = file(d.path(), "s", GOOD, mode);
            let e = ClientSecret::read("oauth.introspection_client secret_file", &p).unwrap_err();
            assert!(e.contains("oauth.introspection_client secret_file"), "{e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(!e.contains(GOOD), "the error shows the secret: {e}");
            std::fs::remove_file(&p).unwrap();
        }
        let e = ClientSecret::read("secret", &d.path().join("missing")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn length_and_characters_are_bounded_at_their_edges() {
        let d = dir();
        let at = |n: usize| "a".repeat(n);
        for (content, ok) in [
            (at(MIN_SECRET_BYTES), true),
            (at(MIN_SECRET_BYTES - 1), false),
            (at(MAX_SECRET_BYTES), true),
            (format!("{}\n", at(MAX_SECRET_BYTES)), true),
            (at(MAX_SECRET_BYTES + 1), false),
            (at(10_000), false),
            (format!("{GOOD} x"), false),
            (format!("{GOOD}\n\n"), false),
            (format!("{GOOD}:x"), false),
            (format!("{GOOD}é"), false),
        ] {
            let p = file(d.path(), "s", &content, 0o600);
            let r = ClientSecret::read("secret", &p);
            assert_eq!(r.is_ok(), ok, "{} bytes: {:?}", content.len(), r.err());
            if let Err(e) = r {
                assert!(!e.contains(&content), "the error shows the secret: {e}");
                assert!(e.contains("openssl rand"), "{e}");
            }
            std::fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn never_shown_and_compared_whole() {
        let s = ClientSecret::from_bytes(Zeroizing::new(GOOD.as_bytes().to_vec())).unwrap();
        assert_eq!(format!("{s:?}"), "ClientSecret(withheld)");
        assert!(s.matches(GOOD.as_bytes()));
        assert!(!s.matches(&GOOD.as_bytes()[..GOOD.len() - 1]));
        assert!(!s.matches(b""));
        let mut other = GOOD.as_bytes().to_vec();
        other[0] = b'1';
        assert!(!s.matches(&other));
    }
}
