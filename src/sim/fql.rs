//! A real parser and evaluator for the subset of the Falcon Query Language the connector sends,
//! so the simulator answers a malformed filter with 400 instead of silently matching everything.
//!
//! Grammar (`+` binds tighter than `,`):
//! ```text
//! or    := and (',' and)*
//! and   := unary ('+' unary)*
//! unary := '(' or ')' | term
//! term  := field ':' op? value
//! op    := '!' | '>' | '>=' | '<' | '<=' | '~' | '!~'
//! value := 'quoted' | ['quoted', ...] | bare
//! ```
//! Quoted values take `\'` and `\\` escapes. Comparisons need an RFC 3339 timestamp or a number.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a filter could not be parsed; the message goes into the 400 envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FQL filter at character {pos}: {reason}")]
pub struct FqlError {
    pub pos: usize,
    pub reason: String,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The empty filter: matches everything.
    All,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Term(Term),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Not,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
    NotLike,
}

/// `field:op value` where the value may be a list (any element matches).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub field: String,
    pub op: Op,
    pub values: Vec<String>,
}

/// Parses a filter; an empty or all-blank filter matches everything.
pub fn parse(input: &str) -> Result<Expr, FqlError> {
    let mut p = Parser {
        chars: input.chars().collect(),
        pos: 0,
    };
    p.skip_ws();
    if p.at_end() {
        return Ok(Expr::All);
    }
    let expr = p.parse_or()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.err(format!(
            "unexpected `{}`; terms must be joined by `+` (AND) or `,` (OR) — was `+` sent unencoded?",
            p.chars[p.pos]
        )));
    }
    Ok(expr)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }
    fn err(&self, reason: impl Into<String>) -> FqlError {
        FqlError {
            pos: self.pos,
            reason: reason.into(),
        }
    }
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn parse_or(&mut self) -> Result<Expr, FqlError> {
        let mut parts = vec![self.parse_and()?];
        while self.eat(',') {
            parts.push(self.parse_and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            Expr::Or(parts)
        })
    }

    fn parse_and(&mut self) -> Result<Expr, FqlError> {
        let mut parts = vec![self.parse_unary()?];
        while self.eat('+') {
            parts.push(self.parse_unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            Expr::And(parts)
        })
    }

    fn parse_unary(&mut self) -> Result<Expr, FqlError> {
        if self.eat('(') {
            let inner = self.parse_or()?;
            if !self.eat(')') {
                return Err(self.err("missing `)`"));
            }
            return Ok(inner);
        }
        self.parse_term().map(Expr::Term)
    }

    fn parse_term(&mut self) -> Result<Term, FqlError> {
        self.skip_ws();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a field name"));
        }
        let field: String = self.chars[start..self.pos].iter().collect();
        if self.peek() != Some(':') {
            return Err(self.err(format!("expected `:` after field `{field}`")));
        }
        self.pos += 1;
        let op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (Some('>'), Some('=')) => {
                self.pos += 2;
                Op::Ge
            }
            (Some('<'), Some('=')) => {
                self.pos += 2;
                Op::Le
            }
            (Some('!'), Some('~')) => {
                self.pos += 2;
                Op::NotLike
            }
            (Some('>'), _) => {
                self.pos += 1;
                Op::Gt
            }
            (Some('<'), _) => {
                self.pos += 1;
                Op::Lt
            }
            (Some('!'), _) => {
                self.pos += 1;
                Op::Not
            }
            (Some('~'), _) => {
                self.pos += 1;
                Op::Like
            }
            _ => Op::Eq,
        };
        let values = match self.peek() {
            Some('[') => {
                self.pos += 1;
                let mut values = Vec::new();
                loop {
                    self.skip_ws();
                    values.push(self.parse_scalar()?);
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some(']') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return Err(self.err("expected `,` or `]` in a value list")),
                    }
                }
                values
            }
            _ => vec![self.parse_scalar()?],
        };
        if matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le) {
            for v in &values {
                if parse_time(v).is_none() && v.parse::<f64>().is_err() {
                    return Err(self.err(format!(
                        "`{v}` is neither an RFC 3339 timestamp nor a number, so `{field}` cannot be compared with it"
                    )));
                }
            }
        }
        Ok(Term { field, op, values })
    }

    fn parse_scalar(&mut self) -> Result<String, FqlError> {
        if self.peek() == Some('\'') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                match self.peek() {
                    None => return Err(self.err("unterminated quoted value")),
                    Some('\\') => {
                        match self.chars.get(self.pos + 1) {
                            Some(&c @ ('\'' | '\\')) => out.push(c),
                            _ => return Err(self.err("only `\\'` and `\\\\` may follow `\\`")),
                        }
                        self.pos += 2;
                    }
                    Some('\'') => {
                        self.pos += 1;
                        return Ok(out);
                    }
                    Some(c) => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a value ('quoted', [list] or a bare word)"));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

impl Expr {
    /// Whether a JSON document (an alert, a quarantine record, an indicator...) matches.
    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Expr::All => true,
            Expr::And(parts) => parts.iter().all(|p| p.matches(doc)),
            Expr::Or(parts) => parts.iter().any(|p| p.matches(doc)),
            Expr::Term(term) => term.matches(doc),
        }
    }

    /// Every field the filter names, for tests and the request log.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Expr::All => Vec::new(),
            Expr::And(p) | Expr::Or(p) => p.iter().flat_map(Expr::fields).collect(),
            Expr::Term(t) => vec![t.field.as_str()],
        }
    }
}

impl Term {
    fn matches(&self, doc: &Value) -> bool {
        let mut leaves = Vec::new();
        collect(doc, &self.field.split('.').collect::<Vec<_>>(), &mut leaves);
        let leaves: Vec<String> = leaves
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect();
        let any = |f: &dyn Fn(&str, &str) -> bool| {
            leaves
                .iter()
                .any(|l| self.values.iter().any(|v| f(l.as_str(), v.as_str())))
        };
        match self.op {
            Op::Eq => any(&|l, v| glob_eq(l, v)),
            Op::Not => !any(&|l, v| glob_eq(l, v)),
            Op::Like => any(&|l, v| l.to_lowercase().contains(&v.to_lowercase())),
            Op::NotLike => !any(&|l, v| l.to_lowercase().contains(&v.to_lowercase())),
            Op::Gt => any(&|l, v| compare(l, v).is_some_and(|o| o.is_gt())),
            Op::Ge => any(&|l, v| compare(l, v).is_some_and(|o| o.is_ge())),
            Op::Lt => any(&|l, v| compare(l, v).is_some_and(|o| o.is_lt())),
            Op::Le => any(&|l, v| compare(l, v).is_some_and(|o| o.is_le())),
        }
    }
}

fn collect<'a>(v: &'a Value, path: &[&str], out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, path, out)),
        Value::Object(map) if !path.is_empty() => {
            if let Some(next) = map.get(path[0]) {
                collect(next, &path[1..], out);
            }
        }
        _ if path.is_empty() => out.push(v),
        _ => {}
    }
}

/// Case-insensitive equality where `*` in the pattern matches any run of characters.
fn glob_eq(text: &str, pattern: &str) -> bool {
    let text = text.to_lowercase();
    let pattern = pattern.to_lowercase();
    if !pattern.contains('*') {
        return text == pattern;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = text.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(idx) => rest = &rest[idx + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

fn compare(left: &str, right: &str) -> Option<std::cmp::Ordering> {
    if let (Some(l), Some(r)) = (parse_time(left), parse_time(right)) {
        return Some(l.cmp(&r));
    }
    let (l, r) = (left.parse::<f64>().ok()?, right.parse::<f64>().ok()?);
    l.partial_cmp(&r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert() -> Value {
        json!({
            "product": "epp",
            "status": "new",
            "name": "it's a \\ test",
            "updated_timestamp": "2025-01-01T10:00:00.123456789Z",
            "device": {"device_id": "abc", "hostname": "HOST-1"},
            "tags": ["one", "two"],
            "severity": 70
        })
    }

    #[test]
    fn connector_alert_filter_matches_by_product_and_time() {
        let f = parse("product:'epp'+updated_timestamp:>='2025-01-01T10:00:00Z'").unwrap();
        assert!(f.matches(&alert()));
        let later = parse("product:'epp'+updated_timestamp:>='2025-01-01T10:00:01Z'").unwrap();
        assert!(!later.matches(&alert()));
    }

    #[test]
    fn comparisons_use_time_order_not_string_order() {
        let f = parse("updated_timestamp:<'2025-01-01T10:00:00.2Z'").unwrap();
        assert!(f.matches(&alert()));
        assert!(
            parse("updated_timestamp:>'2025-01-01T11:00:00+02:00'")
                .unwrap()
                .matches(&alert())
        );
        assert!(parse("severity:>50").unwrap().matches(&alert()));
        assert!(!parse("severity:<=50").unwrap().matches(&alert()));
    }

    #[test]
    fn or_lists_parentheses_and_not_combine() {
        assert!(
            parse("status:'closed',status:'new'")
                .unwrap()
                .matches(&alert())
        );
        assert!(
            parse("(status:'closed',status:'new')+product:'epp'")
                .unwrap()
                .matches(&alert())
        );
        assert!(
            !parse("(status:'closed',status:'x')+product:'epp'")
                .unwrap()
                .matches(&alert())
        );
        assert!(
            parse("status:['in_progress','new']")
                .unwrap()
                .matches(&alert())
        );
        assert!(parse("status:!'closed'").unwrap().matches(&alert()));
        assert!(!parse("status:!'new'").unwrap().matches(&alert()));
        assert!(
            parse("tags:'two'+device.hostname:'host-1'")
                .unwrap()
                .matches(&alert())
        );
        assert!(parse("device.hostname:'HOST*'").unwrap().matches(&alert()));
    }

    #[test]
    fn escapes_in_quoted_values_are_decoded() {
        let f = parse(r"name:'it\'s a \\ test'").unwrap();
        assert!(f.matches(&alert()));
        assert_eq!(
            parse(r"value:['a\'b','c']").unwrap(),
            Expr::Term(Term {
                field: "value".into(),
                op: Op::Eq,
                values: vec!["a'b".into(), "c".into()],
            })
        );
    }

    #[test]
    fn malformed_filters_are_rejected() {
        for bad in [
            "product:'epp' updated_timestamp:>='2025-01-01T00:00:00Z'", // `+` decoded to a space
            "product:'epp",
            "product",
            "product:'epp'+",
            "(product:'epp'",
            "updated_timestamp:>='yesterday'",
            "value:['a','b'",
            r"name:'bad \x escape'",
            ":'x'",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert_eq!(parse("  ").unwrap(), Expr::All);
        assert!(parse("").unwrap().matches(&alert()));
    }
}
