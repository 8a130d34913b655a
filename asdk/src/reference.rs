//! Image references `NAME[:TAG]`, as docker and podman write them (local names only for now).

use std::fmt;
use std::str::FromStr;

/// Tag used when a reference has none.
pub const DEFAULT_TAG: &str = "latest";

/// `NAME:TAG`, e.g. `hello:latest` or `team/vsock-echo:1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    name: String,
    tag: String,
}

/// A string that is not a valid reference.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference '{input}': {reason}")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// A reference from a name and a tag, both validated.
    pub fn new(name: &str, tag: &str) -> Result<Self, ReferenceError> {
        let input = format!("{name}:{tag}");
        let fail = |reason: String| ReferenceError {
            input: input.clone(),
            reason,
        };
        validate_name(name).map_err(fail)?;
        validate_tag(tag).map_err(fail)?;
        Ok(Self {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// Repository name (without tag).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => Self::new(name, tag),
            _ => Self::new(s, DEFAULT_TAG),
        }
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// Checks an image name: `/`-separated components of lowercase letters and digits, joined by
/// single `.`, `_` or `-` (docker's grammar without registry hosts).
pub fn validate_name(name: &str) -> Result<(), String> {
    const HINT: &str = "use lowercase letters, digits and single '.', '_', '-' or '/' between them";
    if name.is_empty() || name.len() > 255 {
        return Err(format!("the name must be 1 to 255 characters; {HINT}"));
    }
    for component in name.split('/') {
        let bytes = component.as_bytes();
        let ok = !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && !bytes
                .windows(2)
                .any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric());
        if !ok {
            return Err(format!("bad name component '{component}': {HINT}"));
        }
    }
    Ok(())
}

/// Checks a tag: up to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad tag '{tag}': use up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

/// Turns an arbitrary program name into a valid image name (lowercase, invalid runs → `-`).
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        "app".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults_tag() {
        let r: Reference = "hello".parse().unwrap();
        assert_eq!(r.to_string(), "hello:latest");
        let r: Reference = "team/vsock-echo:1.0".parse().unwrap();
        assert_eq!((r.name(), r.tag()), ("team/vsock-echo", "1.0"));
    }

    #[test]
    fn rejects_bad_references() {
        for s in [
            "", "Hello", "a//b", "-a", "a:", "a:.x", "a..b", "../x", "a:b/c", "a b",
        ] {
            assert!(s.parse::<Reference>().is_err(), "{s}");
        }
    }

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize_name("My_App.v2"), "my-app-v2");
        assert_eq!(sanitize_name("__"), "app");
        assert!(validate_name(&sanitize_name("vsock-echo")).is_ok());
    }
}
