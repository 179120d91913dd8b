//! Diagnostics: every problem found in a tag map, with file:line:column and what it concerns.

use std::fmt;
use std::ops::Range;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The agent will run, but the engineer should look (overlapping tags, …).
    Warning,
    /// The tag map cannot be used.
    Error,
}

/// One problem, located in the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Path of the file as given by the user.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// What the problem concerns: `agent`, `device 'x'`, `device 'x' tag 'y'`.
    pub subject: String,
    /// What is wrong, and where useful, how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}: ", self.file, self.line, self.column)?;
        if !self.subject.is_empty() {
            write!(f, "{}: ", self.subject)?;
        }
        write!(f, "{}", self.message)
    }
}

/// Collects diagnostics for one source text (borrowed: a 100,000-tag map is ~12 MB of text,
/// not copied; the line index is built at the first diagnostic only).
///
/// Spans given to it are relative to [`Diagnostics::set_base`] (0 unless a part of the text is
/// parsed on its own, see `config::parse_str`).
#[derive(Debug)]
pub struct Diagnostics<'t> {
    file: String,
    text: &'t str,
    line_starts: std::cell::OnceCell<Vec<usize>>,
    base: usize,
    items: Vec<(usize, Diagnostic)>,
}

impl<'t> Diagnostics<'t> {
    /// Start collecting for `file` whose contents are `text`.
    pub fn new(file: impl Into<String>, text: &'t str) -> Self {
        Diagnostics {
            file: file.into(),
            text,
            line_starts: std::cell::OnceCell::new(),
            base: 0,
            items: Vec::new(),
        }
    }

    /// Spans given from now on are relative to byte `base` of the text (a part parsed alone).
    pub fn set_base(&mut self, base: usize) {
        self.base = base;
    }

    fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = (offset + self.base).min(self.text.len());
        let line_starts = self.line_starts.get_or_init(|| {
            let mut v = vec![0];
            v.extend(self.text.match_indices('\n').map(|(i, _)| i + 1));
            v
        });
        let line = match line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, column + 1)
    }

    /// Record a problem at byte span `span` (only its start is used).
    pub fn push(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = self.locate(span.start);
        self.items.push((
            span.start + self.base,
            Diagnostic {
                severity,
                file: self.file.clone(),
                line,
                column,
                subject: subject.into(),
                message: message.into(),
            },
        ));
    }

    /// Record an error.
    pub fn error(
        &mut self,
        span: Range<usize>,
        subject: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.push(Severity::Error, span, subject, msg);
    }

    /// Record a warning.
    pub fn warning(
        &mut self,
        span: Range<usize>,
        subject: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.push(Severity::Warning, span, subject, msg);
    }

    /// Record a TOML deserialization error; `fallback` locates it when the error has no span.
    pub fn toml_error(&mut self, err: &toml::de::Error, fallback: Range<usize>, subject: &str) {
        let span = err.span().unwrap_or(fallback);
        // The message of a toml error is one line; strip a trailing newline if any. A secret
        // key's value (`password = 12345`: the type error quotes it) is never shown.
        let abs = span.start + self.base..span.end + self.base;
        let msg = flowsquare_service::secret::redact_value_error(
            self.text,
            Some(abs),
            err.message().trim_end(),
        );
        self.error(span, subject, msg);
    }

    /// `true` when any error (not warning) was recorded.
    pub fn has_errors(&self) -> bool {
        self.items
            .iter()
            .any(|(_, d)| d.severity == Severity::Error)
    }

    /// The 1-based line of a byte offset (for "first defined at line N" notes).
    pub fn line_of(&self, offset: usize) -> usize {
        self.locate(offset).0
    }

    /// All diagnostics, in file order.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items
            .sort_by_key(|(pos, d)| (*pos, d.severity == Severity::Warning));
        self.items.into_iter().map(|(_, d)| d).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_line_and_column() {
        let mut d = Diagnostics::new("x.toml", "a = 1\nbé = 2\n");
        d.error(9..10, "agent", "boom");
        let v = d.into_sorted();
        assert_eq!(v[0].line, 2);
        assert_eq!(v[0].column, 3);
        assert_eq!(v[0].to_string(), "x.toml:2:3: error: agent: boom");
    }
}
