//! Image references `NAME[:TAG]`, as docker and podman write them. A name may start with a
//! registry host (`localhost:5000/hello`, `registry.example.com/team/app`), as pulled images
//! are stored under their full reference.

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
    let mut components = name.split('/').peekable();
    if let Some(first) = components.peek() {
        if name.contains('/') && is_registry_host(first) {
            validate_host(first)?;
            components.next();
        }
    }
    for component in components {
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

/// Whether the first component of a name is a registry host rather than a path component, by
/// docker's rule: it contains a `.` or a `:`, or is `localhost`.
pub fn is_registry_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// Checks a registry host: DNS labels (letters, digits, inner '-') joined by '.', or an IPv4
/// address, optionally with `:PORT`.
fn validate_host(host: &str) -> Result<(), String> {
    let bad = || {
        format!("bad registry host '{host}': use HOST or HOST:PORT, e.g. localhost:5000 or registry.example.com")
    };
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(bad());
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
    fn names_may_start_with_a_registry_host() {
        let r: Reference = "localhost:5000/hello:1".parse().unwrap();
        assert_eq!((r.name(), r.tag()), ("localhost:5000/hello", "1"));
        let r: Reference = "127.0.0.1:5000/team/app".parse().unwrap();
        assert_eq!((r.name(), r.tag()), ("127.0.0.1:5000/team/app", "latest"));
        let r: Reference = "Registry.Example.com/app:v2".parse().unwrap();
        assert_eq!(r.name(), "Registry.Example.com/app");
        for s in [
            "localhost:/a",
            "localhost:5x/a",
            "-bad.com/a",
            "a.b..c/x",
            "host:5000/Up",
        ] {
            assert!(s.parse::<Reference>().is_err(), "{s}");
        }
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
