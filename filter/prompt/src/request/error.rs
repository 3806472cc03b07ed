//! Typed errors for request parsing, each with its HTTP status, OpenAI `code` and `param`.

use crate::error::{ApiError, Disposition};

/// Why a request body was not accepted.
///
/// Statuses follow what OpenAI and vLLM return: 413 for an oversized body, 400 for everything
/// else (vLLM maps pydantic validation errors to 400, not 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is larger than [`Limits::max_body_bytes`](super::Limits::max_body_bytes).
    #[error("request body is {size} bytes, more than the limit of {limit} bytes")]
    BodyTooLarge {
        /// Size of the body in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not valid JSON (or not UTF-8).
    #[error("request body is not valid JSON: {reason}")]
    InvalidJson {
        /// The parser's description, with line and column.
        reason: String,
    },
    /// The body nests arrays/objects deeper than [`Limits::max_json_depth`](super::Limits::max_json_depth).
    #[error("request body nests JSON arrays/objects deeper than {limit} levels")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// The top-level JSON value is not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// A required parameter is absent (or null).
    #[error("missing required parameter '{param}'")]
    MissingParameter {
        /// The parameter, e.g. `messages[0].role`.
        param: String,
    },
    /// A parameter has the wrong JSON type.
    #[error("invalid type for '{param}': expected {expected}")]
    InvalidType {
        /// The parameter, e.g. `messages[3].content`.
        param: String,
        /// What was expected, e.g. `a string`.
        expected: &'static str,
    },
    /// A parameter has the right type but a value that is not allowed.
    #[error("invalid value for '{param}': {reason}")]
    InvalidValue {
        /// The parameter.
        param: String,
        /// Why the value is not allowed.
        reason: String,
    },
    /// An array that must not be empty is empty.
    #[error("'{param}' must not be empty")]
    EmptyArray {
        /// The parameter, e.g. `messages`.
        param: String,
    },
    /// An array is longer than its configured limit.
    #[error("'{param}' has {count} items, more than the limit of {limit}")]
    TooManyItems {
        /// The parameter (`messages` or `tools`).
        param: &'static str,
        /// How many items the request has.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A content part this text-only router cannot tokenize (image, audio, video, file, …).
    #[error("content part of type '{part_type}' at '{param}' is not supported by the router (text parts only)")]
    UnsupportedContentPart {
        /// The part, e.g. `messages[1].content[2]`.
        param: String,
        /// Its `type`.
        part_type: String,
    },
    /// A parameter that changes the prompt in a way the router cannot reproduce (e.g. a
    /// per-request `chat_template`, or `prompt_embeds`).
    #[error("parameter '{param}' is not supported by the router")]
    UnsupportedParameter {
        /// The parameter.
        param: String,
    },
}

impl ApiError for RequestError {
    fn status(&self) -> u16 {
        match self {
            RequestError::BodyTooLarge { .. } => 413,
            _ => 400,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RequestError::BodyTooLarge { .. } => "request_too_large",
            RequestError::InvalidJson { .. } => "invalid_json",
            RequestError::TooDeep { .. } => "json_too_deep",
            RequestError::NotAnObject | RequestError::InvalidType { .. } => "invalid_type",
            RequestError::MissingParameter { .. } => "missing_required_parameter",
            RequestError::InvalidValue { .. } => "invalid_value",
            RequestError::EmptyArray { .. } => "empty_array",
            RequestError::TooManyItems { .. } => "array_above_max_length",
            RequestError::UnsupportedContentPart { .. } => "unsupported_content_part",
            RequestError::UnsupportedParameter { .. } => "unsupported_parameter",
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            RequestError::MissingParameter { param }
            | RequestError::InvalidType { param, .. }
            | RequestError::InvalidValue { param, .. }
            | RequestError::EmptyArray { param }
            | RequestError::UnsupportedContentPart { param, .. }
            | RequestError::UnsupportedParameter { param } => Some(param.clone()),
            RequestError::TooManyItems { param, .. } => Some((*param).to_owned()),
            RequestError::BodyTooLarge { .. }
            | RequestError::InvalidJson { .. }
            | RequestError::TooDeep { .. }
            | RequestError::NotAnObject => None,
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            RequestError::UnsupportedContentPart { .. }
            | RequestError::UnsupportedParameter { .. } => Disposition::Forward,
            _ => Disposition::Reject,
        }
    }
}
