//! Where a field of a JSON document is: the line and column of a dotted path such as
//! `plans.pro.meters.api_calls.price.tiers[1].up_to`, the paths the catalogue's checker
//! names its problems by ([`crate::catalogue::Problem`]).
//!
//! `serde_json` reports the line and column of a syntax or shape error, but once a document
//! has parsed it keeps no positions, and a catalogue's rules are checked after parsing. So
//! `tally catalogue check` scans the text once more with this small scanner, which records
//! where each member and element starts, and points each problem at its field (or, for a
//! missing field, at the closest enclosing one that exists).

use std::collections::BTreeMap;

/// The deepest nesting scanned; deeper values are skipped (the catalogue nests 7 deep, and
/// `serde_json` refuses past 128).
const MAX_DEPTH: usize = 128;

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

/// The positions of every member and element of a JSON document, by dotted path: a
/// member's position is its key's opening quote, an element's its first character, the
/// document's (path `""`) its first value.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    by_path: BTreeMap<String, Position>,
}

impl Positions {
    /// Scans `text`. Text that is not JSON yields whatever positions were found before the
    /// scanner lost its way (callers scan documents that parsed).
    pub fn scan(text: &str) -> Positions {
        let mut s = Scanner {
            chars: text.chars().peekable(),
            at: Position { line: 1, column: 1 },
            out: BTreeMap::new(),
        };
        s.ws();
        s.out.insert(String::new(), s.at);
        s.value("", 0);
        Positions { by_path: s.out }
    }

    /// Where `path` is; for a path that is not in the document (a missing field), where its
    /// longest leading part that is, down to the document itself.
    pub fn find(&self, path: &str) -> Position {
        let mut p = path;
        loop {
            if let Some(pos) = self.by_path.get(p) {
                return *pos;
            }
            // Drop the last `.field` or `[n]`.
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

/// One thing wrong with a catalogue file, with where it is: what `tally catalogue check`
/// prints, one per problem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The dotted path of the field at fault (`""` for a syntax error, whose position is
    /// the parser's).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The findings of a catalogue error for the `text` it came from: a syntax or shape error
/// at the parser's line and column, or each rule broken at its field's position. A read
/// error has no position and gives none.
pub fn findings(error: &crate::catalogue::CatalogueError, text: &str) -> Vec<Finding> {
    use crate::catalogue::CatalogueError;
    match error {
        CatalogueError::Read { .. } => Vec::new(),
        CatalogueError::Parse {
            line,
            column,
            message,
            ..
        } => vec![Finding {
            line: *line,
            column: *column,
            path: String::new(),
            message: message.clone(),
        }],
        CatalogueError::Invalid { problems, .. } => {
            let positions = Positions::scan(text);
            problems
                .iter()
                .map(|p| {
                    let at = positions.find(&p.path);
                    Finding {
                        line: at.line,
                        column: at.column,
                        path: p.path.clone(),
                        message: p.message.clone(),
                    }
                })
                .collect()
        }
    }
}

struct Scanner<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    at: Position,
    out: BTreeMap<String, Position>,
}

impl Scanner<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.at.line += 1;
            self.at.column = 1;
        } else {
            self.at.column += 1;
        }
        Some(c)
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// The string starting at the current `"`, unescaped only as far as paths need (an
    /// escape keeps the escaped character).
    fn string(&mut self) -> String {
        let mut out = String::new();
        self.bump();
        while let Some(c) = self.bump() {
            match c {
                '"' => break,
                '\\' => {
                    if let Some(e) = self.bump() {
                        out.push(e);
                    }
                }
                c => out.push(c),
            }
        }
        out
    }

    fn value(&mut self, path: &str, depth: usize) {
        self.ws();
        match self.peek() {
            Some('{') if depth < MAX_DEPTH => self.object(path, depth),
            Some('[') if depth < MAX_DEPTH => self.array(path, depth),
            Some('"') => {
                self.string();
            }
            _ => {
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, ',' | '}' | ']') && !c.is_whitespace())
                {
                    self.bump();
                }
            }
        }
    }

    fn object(&mut self, path: &str, depth: usize) {
        self.bump();
        loop {
            self.ws();
            match self.peek() {
                Some('"') => {}
                Some('}') => {
                    self.bump();
                    return;
                }
                _ => return,
            }
            let at = self.at;
            let key = self.string();
            let child = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            self.out.entry(child.clone()).or_insert(at);
            self.ws();
            if self.peek() != Some(':') {
                return;
            }
            self.bump();
            self.value(&child, depth + 1);
            self.ws();
            match self.bump() {
                Some(',') => {}
                _ => return,
            }
        }
    }

    fn array(&mut self, path: &str, depth: usize) {
        self.bump();
        let mut i = 0usize;
        loop {
            self.ws();
            match self.peek() {
                Some(']') => {
                    self.bump();
                    return;
                }
                None => return,
                _ => {}
            }
            let child = format!("{path}[{i}]");
            self.out.entry(child.clone()).or_insert(self.at);
            self.value(&child, depth + 1);
            self.ws();
            match self.bump() {
                Some(',') => i += 1,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn members_and_elements_are_found_by_path() {
        let text = "{\n  \"a\": {\n    \"b\": [1, {\"c\": \"x\\\"y\"}],\n    \"d\": true\n  }\n}";
        let p = Positions::scan(text);
        assert_eq!(p.find(""), at(1, 1));
        assert_eq!(p.find("a"), at(2, 3));
        assert_eq!(p.find("a.b"), at(3, 5));
        assert_eq!(p.find("a.b[0]"), at(3, 11));
        assert_eq!(p.find("a.b[1]"), at(3, 14));
        assert_eq!(p.find("a.b[1].c"), at(3, 15));
        // After an escaped quote, the scanner is still in step.
        assert_eq!(p.find("a.d"), at(4, 5));
    }

    #[test]
    fn a_missing_field_points_at_its_closest_existing_parent() {
        let p = Positions::scan("{\n \"a\": {\n  \"b\": 1\n }\n}");
        assert_eq!(p.find("a.missing"), at(2, 2));
        assert_eq!(p.find("a.b[3]"), at(3, 3));
        assert_eq!(p.find("nothing.here"), at(1, 1));
    }

    #[test]
    fn broken_text_does_not_panic() {
        for text in ["", "{", "{\"a\":", "[1,", "{\"a\" 1}", "\"unterminated"] {
            let p = Positions::scan(text);
            let _ = p.find("a.b");
        }
    }
}
