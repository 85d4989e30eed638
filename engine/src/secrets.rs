//! Secrets: values given to the server (`--workflow-env`, its environment
//! variable, a file of them) that templates may put into a request to a
//! service but that nothing else may show. Wherever text leaves the template
//! engine (step errors, events, logs, API answers, the saga's output) they are
//! replaced by `***`.

use std::borrow::Cow;

use serde_json::Value;

/// What a secret is replaced by.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: masking `eu` or `1` everywhere
/// would garble every text and hide nothing.
pub const MIN_LEN: usize = 4;

/// The server's secret values, and their percent-encoded forms (as they
/// appear in a URL an error quotes).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Longest first, so that a secret containing another is masked whole.
    forms: Vec<String>,
}

impl Secrets {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut forms: Vec<String> = values
            .into_iter()
            .filter(|v| v.chars().count() >= MIN_LEN)
            .flat_map(|v| {
                let encoded = crate::runtime::http::percent_encode(&v);
                [v, encoded]
            })
            .collect();
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Self { forms }
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for form in &self.forms {
            if out.contains(form.as_str()) {
                out = Cow::Owned(out.replace(form.as_str(), MASK));
            }
        }
        out
    }

    /// Masks the secrets in every string (and object key) of `value`.
    pub fn redact_value(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact(s) {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.redact_value(&mut v);
                    map.insert(self.redact(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_values_and_their_url_forms_longest_first() {
        let s = Secrets::new([
            "k3y-s3cret".to_string(),
            "s3cret".into(),
            "a b+c/d".into(),
            "eu".into(),
        ]);
        assert_eq!(
            s.redact("GET http://x/?key=k3y-s3cret&x=s3cret failed"),
            "GET http://x/?key=***&x=*** failed"
        );
        assert_eq!(s.redact("q=a%20b%2Bc%2Fd or a b+c/d"), "q=*** or ***");
        assert_eq!(s.redact("region eu"), "region eu", "short values stay");
        let mut v = json!({"error": "key k3y-s3cret", "list": ["s3cret"], "s3cret": 1, "n": 2});
        s.redact_value(&mut v);
        assert_eq!(
            v,
            json!({"error": "key ***", "list": ["***"], "***": 1, "n": 2})
        );
    }

    #[test]
    fn no_secrets_borrow_the_text() {
        assert!(matches!(Secrets::default().redact("abc"), Cow::Borrowed(_)));
    }
}
