//! Falcon's `{meta, resources, errors}` envelope, decoded leniently.
//!
//! `resources` and `errors` may be null or absent (both mean empty), `meta.pagination.offset` is a
//! number on most endpoints and a string on one, and a single odd resource is skipped with a
//! debug line instead of failing the whole page.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    meta: Option<Meta>,
    #[serde(default)]
    resources: Option<Vec<Value>>,
    #[serde(default)]
    errors: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct Pagination {
    #[serde(default)]
    pub offset: Option<Offset>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub after: Option<String>,
}

/// `offset` is an integer on most endpoints and a string on the devices-ran-on one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Offset {
    Number(u64),
    Text(String),
}

impl Offset {
    pub fn as_text(&self) -> String {
        match self {
            Offset::Number(n) => n.to_string(),
            Offset::Text(s) => s.clone(),
        }
    }
}

impl Envelope {
    /// An empty body (some 202s) is an empty envelope; anything else must be JSON.
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Envelope::default());
        }
        serde_json::from_slice(body).map_err(|e| format!("not a Falcon envelope: {e}"))
    }

    /// The `errors[].message` texts of a failed answer; for a body that is not an envelope
    /// (an HTML error page), its start.
    pub fn error_messages_of(body: &[u8]) -> Vec<String> {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => envelope.error_messages(),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(200).collect();
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![text]
                }
            }
        }
    }

    pub fn error_messages(&self) -> Vec<String> {
        self.errors
            .iter()
            .flatten()
            .map(|e| match e.get("message").and_then(Value::as_str) {
                Some(message) => message.to_string(),
                None => e.to_string(),
            })
            .collect()
    }

    /// Which of `ids` the answer's `errors` name as failed (by the error's `id`, or its
    /// message quoting the id), each with Falcon's message: a 2xx with these is a partial
    /// success.
    pub fn failed_entities(&self, ids: &[String]) -> Vec<super::EntityFailure> {
        let mut failed: Vec<super::EntityFailure> = Vec::new();
        for error in self.errors.iter().flatten() {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_string);
            let named = error.get("id").and_then(Value::as_str);
            for id in ids {
                let hit =
                    named == Some(id.as_str()) || (!id.is_empty() && message.contains(id.as_str()));
                if hit && !failed.iter().any(|f| &f.id == id) {
                    failed.push(super::EntityFailure {
                        id: id.clone(),
                        error: message.clone(),
                        code: error
                            .get("code")
                            .and_then(Value::as_u64)
                            .and_then(|c| u16::try_from(c).ok()),
                    });
                }
            }
        }
        failed
    }

    pub fn pagination(&self) -> Pagination {
        self.meta
            .as_ref()
            .and_then(|m| m.pagination.clone())
            .unwrap_or_default()
    }

    pub fn resource_count(&self) -> usize {
        self.resources.as_ref().map_or(0, Vec::len)
    }

    /// The resources as `T`, skipping (and logging) those that do not fit.
    pub fn resources<T: DeserializeOwned>(&self, what: &str) -> Vec<T> {
        self.resources
            .iter()
            .flatten()
            .filter_map(|raw| match T::deserialize(raw) {
                Ok(item) => Some(item),
                Err(e) => {
                    tracing::debug!(what, "skipping a Falcon resource that cannot be read: {e}");
                    None
                }
            })
            .collect()
    }

    /// String resources (the ids a query endpoint returns); anything else is skipped.
    pub fn ids(&self) -> Vec<String> {
        self.resources
            .iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_or_absent_lists_are_empty() {
        let env = Envelope::decode(br#"{"meta":{},"resources":null,"errors":null}"#).unwrap();
        assert_eq!(env.resource_count(), 0);
        assert!(env.error_messages().is_empty());
        let env = Envelope::decode(br#"{"meta":null}"#).unwrap();
        assert!(env.ids().is_empty());
        assert!(Envelope::decode(b"").unwrap().ids().is_empty());
    }

    #[test]
    fn offsets_are_numbers_or_strings() {
        let env =
            Envelope::decode(br#"{"meta":{"pagination":{"offset":"abc","total":3}}}"#).unwrap();
        assert_eq!(env.pagination().offset.unwrap().as_text(), "abc");
        let env =
            Envelope::decode(br#"{"meta":{"pagination":{"offset":5000,"total":3}}}"#).unwrap();
        assert_eq!(env.pagination().offset.unwrap().as_text(), "5000");
    }

    #[test]
    fn an_odd_resource_is_skipped_not_fatal() {
        #[derive(Deserialize)]
        struct Item {
            #[allow(dead_code)]
            id: String,
        }
        let env = Envelope::decode(br#"{"resources":[{"id":"a"},{"id":7},{"id":"b"}]}"#).unwrap();
        assert_eq!(env.resources::<Item>("test").len(), 2);
    }

    #[test]
    fn entities_named_in_errors_are_failed() {
        let env = Envelope::decode(
            br#"{"errors":[{"code":404,"id":"cid:ind:aaa1","message":"not found"},{"code":409,"message":"device `d0c3` cannot be contained"},{"code":500,"message":"other"}]}"#,
        )
        .unwrap();
        let ids = vec![
            "cid:ind:aaa1".to_string(),
            "b7b7".to_string(),
            "d0c3".to_string(),
        ];
        let failed = env.failed_entities(&ids);
        let names: Vec<&str> = failed.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(names, ["cid:ind:aaa1", "d0c3"]);
        assert_eq!(failed[0].error, "not found");
    }

    #[test]
    fn html_error_pages_still_give_a_message() {
        assert_eq!(
            Envelope::error_messages_of(b"<html>Bad gateway</html>"),
            vec!["<html>Bad gateway</html>".to_string()]
        );
        assert_eq!(
            Envelope::error_messages_of(br#"{"errors":[{"code":400,"message":"bad filter"}]}"#),
            vec!["bad filter".to_string()]
        );
    }
}
