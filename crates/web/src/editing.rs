//! What the configuration page shows and asks of the gateway: the site layer's text and its
//! kept versions, a check of a proposed text (every mistake, and the settings it would change),
//! and the state of an apply (the gateway restarted on the proposal, health-checked, then kept
//! or rolled back).

use serde::Serialize;

/// The site layer as the page edits it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SiteConfig {
    /// Its text; empty when there is none yet (the shipped file alone applies).
    pub text: String,
    /// Its file, for the page to name.
    pub path: String,
    /// The earlier versions kept, newest first.
    pub history: Vec<KeptVersion>,
    /// The last apply, or the one running.
    pub apply: ApplyState,
    /// How long an applied configuration is checked before it is kept, in seconds.
    pub check_s: u64,
}

/// One earlier version of the site layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptVersion {
    /// Its number, for a restore.
    pub number: u64,
    /// When it was replaced, seconds since the Unix epoch.
    pub replaced_s: u64,
}

/// One mistake of a proposed configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file it is in (the shipped file's mistakes are shown too: the proposal is read on
    /// top of it).
    pub file: String,
    /// Whether it is in the proposed text itself, so that its line is the page's.
    pub in_proposal: bool,
    /// 1-based line and column, when it has a place.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The dotted key; empty for the whole file.
    pub key: String,
    /// What is wrong and what to do, in words (secret values redacted).
    pub text: String,
}

/// One setting a proposal changes, as written in the files (secrets redacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The dotted key.
    pub key: String,
    /// The running value; `None` when only the built-in default applies now.
    pub old: Option<String>,
    /// The proposed value; `None` when the built-in default would apply.
    pub new: Option<String>,
}

/// A proposal checked: valid when there is no problem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// Every mistake, in file order.
    pub problems: Vec<Problem>,
    /// What it changes against the running configuration (empty when it has problems).
    pub changes: Vec<Change>,
}

impl Checked {
    /// Whether the proposal may be applied.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where the last apply stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApplyState {
    /// None since the gateway started.
    #[default]
    Idle,
    /// The gateway runs on the proposal and is being checked.
    Applying {
        /// Who applied it.
        by: String,
        /// When, seconds since the Unix epoch.
        started_s: u64,
        /// How long the check lasts, in seconds.
        check_s: u64,
    },
    /// The proposal passed its check and is the site layer now.
    Kept {
        /// Who applied it.
        by: String,
        /// When the check ended.
        ended_s: u64,
        /// What was checked, in words.
        summary: String,
    },
    /// The proposal failed; the previous configuration runs again.
    RolledBack {
        /// Who applied it.
        by: String,
        /// When the rollback ended.
        ended_s: u64,
        /// Which check failed, in plain words.
        why: String,
    },
}

/// Why an apply did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyRefusal {
    /// Another apply is running (HTTP 409).
    Busy,
    /// The proposal has mistakes.
    Invalid(Checked),
    /// It cannot be applied from the page, in words (e.g. it would move the UI itself).
    Refused(String),
}

/// What a gateway that cannot edit its configuration says (one started without a
/// configuration file, or a stand-in).
pub const NOT_EDITABLE: &str = "this gateway was not started from a configuration file \
                                (fieldlink run --config PATH): there is nothing to edit here";
