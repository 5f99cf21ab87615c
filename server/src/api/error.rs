//! OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, with the HTTP
//! status each kind of failure gets.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is malformed or a field is wrong (`param` names it).
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: None,
        }
    }

    /// 400 for a field that must be present.
    pub fn missing(param: &str) -> Self {
        let mut e = Self::invalid(Some(param.to_string()), format!("`{param}` is required"));
        e.code = Some("missing_required_parameter");
        e
    }

    /// 400 for a prompt or generation that does not fit the model's context.
    pub fn context_length(param: &str, message: String) -> Self {
        let mut e = Self::invalid(Some(param.to_string()), message);
        e.code = Some("context_length_exceeded");
        e
    }

    /// 404: `model` names no model this server serves.
    pub fn model_not_found(name: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("The model `{name}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        ApiError {
            status: 401,
            message: "Incorrect API key provided: send `Authorization: Bearer KEY`.".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 404 for a path the server does not serve.
    pub fn not_found(method: &str, path: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("{method} {path}: no such route"),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// 405 for a served path with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        ApiError {
            status: 405,
            message: format!("{method} {path}: use {allowed}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 429: the engine's queue is full; the client should retry later.
    pub fn queue_full(max_queue: usize) -> Self {
        ApiError {
            status: 429,
            message: format!("the server's request queue is full ({max_queue} waiting); retry later"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 503: loading, or shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { status: 503, message: message.into(), kind: "service_unavailable", param: None, code: None }
    }

    /// 500: the engine failed.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: 500, message: message.into(), kind: "internal_error", param: None, code: None }
    }

    /// The JSON body, as OpenAI shapes it.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        })
        .to_string()
        .into_bytes()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_openais() {
        let e = ApiError::missing("prompt");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "prompt");
        assert_eq!(v["error"]["code"], "missing_required_parameter");
        assert!(v["error"]["message"].as_str().unwrap().contains("prompt"));
        let v: serde_json::Value = serde_json::from_slice(&ApiError::unauthorized().to_json()).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["param"].is_null());
        assert_eq!(ApiError::queue_full(3).status, 429);
        assert_eq!(ApiError::model_not_found("x").status, 404);
    }
}
