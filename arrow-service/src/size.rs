//! Memory sizes as users write them: `256M`, `1G`, `512MiB`, or a bare number of MiB.

/// Smallest guest memory arrowd accepts (MiB).
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest memory arrowd accepts (MiB).
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

/// Parses a memory size into MiB; the error says what is accepted.
pub fn parse_mib(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "bad memory size {text:?}: use a number with an optional unit, e.g. 256M, 1G or 512 (MiB), between {MIN_MEMORY_MIB}M and {}G",
            MAX_MEMORY_MIB / 1024
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mib = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => Some(n),
        "g" | "gb" | "gib" => n.checked_mul(1024),
        "k" | "kb" | "kib" if n.is_multiple_of(1024) => Some(n / 1024),
        _ => None,
    }
    .ok_or_else(bad)?;
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(bad());
    }
    u32::try_from(mib).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    #[test]
    fn units_and_limits() {
        assert_eq!(parse_mib("256M"), Ok(256));
        assert_eq!(parse_mib("1g"), Ok(1024));
        assert_eq!(parse_mib("64"), Ok(64));
        assert_eq!(parse_mib("65536k"), Ok(64));
        for bad in ["", "M", "1", "12x", "-5M", "100000G", "1.5G"] {
            assert!(parse_mib(bad).is_err(), "{bad}");
        }
    }
}
