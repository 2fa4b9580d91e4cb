//! Docker-style errors: a status code and `{"message": "..."}`, and the
//! mapping from domain rejections and engine errors to them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_core::Rejection;
use berth_engine::CommandError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "message": self.message }))).into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        let status = match &rejection {
            Rejection::InvalidName { .. } | Rejection::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Rejection::NotFound { .. } => StatusCode::NOT_FOUND,
            Rejection::NameInUse { .. } | Rejection::AlreadyExists { .. } | Rejection::WrongState { .. } | Rejection::InUse { .. } => {
                StatusCode::CONFLICT
            }
            Rejection::WrongExpectedVersion { .. } => StatusCode::CONFLICT,
            Rejection::LimitReached(_) => StatusCode::FORBIDDEN,
            Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, rejection.to_string())
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> ApiError {
        match error {
            CommandError::Rejected(rejection) => rejection.into(),
            CommandError::InProgress(_) => ApiError::conflict(error.to_string()),
            CommandError::Log(_) | CommandError::Read(_) => ApiError::internal(error.to_string()),
        }
    }
}
