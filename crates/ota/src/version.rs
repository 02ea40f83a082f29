//! Versions compared as dotted numbers ("1.10.0" is newer than "1.9.3"), for the downgrade
//! check. A suffix after `-` or `+` is kept in the text but does not order.

use std::cmp::Ordering;

/// A version's numeric part.
#[derive(Debug, Clone)]
pub struct Version(Vec<u64>);

impl Version {
    /// `"1.4.0"`, `"2026.12"`, `"1.4.0-rc1"`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.split(['-', '+']).next()?;
        let parts: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty() && p.len() <= 8).map(Self)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |v: &Self, i: usize| v.0.get(i).copied().unwrap_or(0);
        (0..len)
            .map(|i| at(self, i).cmp(&at(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

/// Whether installing `new` over `running` goes back in versions. An unreadable running
/// version (none recorded yet) is no downgrade.
pub fn is_downgrade(running: Option<&str>, new: &str) -> bool {
    match (running.and_then(Version::parse), Version::parse(new)) {
        (Some(running), Some(new)) => new < running,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.10.0") > v("1.9.3"));
        assert_eq!(v("1.4"), v("1.4.0"));
        assert_eq!(v("1.4.0-rc1"), v("1.4.0"));
        assert!(Version::parse("one").is_none());
        assert!(is_downgrade(Some("1.4.0"), "1.3.9"));
        assert!(!is_downgrade(Some("1.4.0"), "1.4.0"));
        assert!(!is_downgrade(None, "0.1"));
    }
}
