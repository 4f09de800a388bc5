//! Errors of the service: [`ServerError`] for start-up and configuration, [`ApiError`] for
//! requests.
//!
//! A client error (4xx) says what is wrong with the request, naming the field. An internal
//! error (500) tells the client nothing of the internals: its body is a generic message
//! and the request's id, and the error's whole chain is logged once, with the same id, by
//! the middleware that knows it (`middleware::observe`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What went wrong in `retrywise-server` outside a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is unusable; names where it came from and the field.
    #[error("invalid configuration ({origin}): `{field}` {problem}")]
    Config {
        /// The file, `environment` or `flags`.
        origin: String,
        /// The setting.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service would listen beyond this machine with nobody checking who writes.
    #[error(
        "refusing to listen on {addr} without a token: anyone who can reach it could post attempts and reload models; \
         set a token (RETRYWISE_TOKEN, `token` in the file) or allow it explicitly (--allow-unauthenticated)"
    )]
    Unauthenticated {
        /// The address asked for.
        addr: String,
    },
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The models folder could not be read.
    #[error("cannot read the models folder {path}")]
    Models {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The models folder is not one: missing, a file, or a model's own folder or a
    /// version folder instead of the folder that holds the models.
    #[error("the models folder {path} {problem}")]
    ModelsLayout {
        /// The folder asked for.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The attempt collector could not be opened.
    #[error("cannot open the attempts folder")]
    Collector(#[source] retrywise_collect::CollectError),
    /// Serving failed.
    #[error("the server stopped")]
    Serve(#[source] std::io::Error),
}

/// Why a request was not served. Each variant is one status.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request is malformed or out of range; the message names the field
    /// (`context.attempt: must be at least 1`).
    BadRequest(String),
    /// 401: a token is required and was not given.
    Unauthorized,
    /// 404: no such model, target or route.
    NotFound(String),
    /// 405: the route exists, not with this method.
    MethodNotAllowed,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge(String),
    /// 415: the body's media type is not one the route reads.
    UnsupportedMediaType(String),
    /// 503: the service cannot take the request now (overloaded, no model loaded, the
    /// collector busy, too slow); `retry_after` seconds when it knows when to come back.
    Unavailable {
        /// What is unavailable.
        message: String,
        /// When to come back, in seconds.
        retry_after: Option<u64>,
    },
    /// 500: a fault of the service, not of the request. Logged once with its chain; the
    /// client sees a generic message and the request id.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after,
        }
    }

    /// 500, for an internal fault.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message a client sees.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Unavailable { message: m, .. } => m.clone(),
            ApiError::Unauthorized => {
                "authorization: a valid `Authorization: Bearer <token>` header is required".into()
            }
            ApiError::MethodNotAllowed => "method not allowed on this route".into(),
            ApiError::Internal(_) => INTERNAL_MESSAGE.into(),
        }
    }
}

/// What a client is told of an internal error.
pub(crate) const INTERNAL_MESSAGE: &str =
    "internal error; the service logged it with this request id";

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, naming the field (`context.attempt: must be at least 1`).
    pub error: String,
    /// The request's id (also in the `x-request-id` header), for internal errors: the key
    /// to the service's log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An internal error travelling from a handler to the middleware that logs it.
#[derive(Debug, Clone)]
pub(crate) struct InternalFault(pub(crate) Arc<dyn std::error::Error + Send + Sync>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.message(),
            request_id: None,
        };
        let mut r = (status, Json(body)).into_response();
        match self {
            ApiError::Unavailable {
                retry_after: Some(s),
                ..
            } => {
                if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unauthorized => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Internal(e) => {
                r.extensions_mut().insert(InternalFault(Arc::from(e)));
            }
            _ => {}
        }
        r
    }
}

// The whole chain of an error, `a: b: c`.
pub(crate) use retrywise_collect::error_chain as chain;
