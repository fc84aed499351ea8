//! `OSSystemExtensionError` codes: how the system says why a system
//! extension request failed, shared by the daemon that decides and the apps
//! that ask.

pub const UNKNOWN: i64 = 1;
pub const MISSING_ENTITLEMENT: i64 = 2;
pub const UNSUPPORTED_PARENT_BUNDLE_LOCATION: i64 = 3;
pub const EXTENSION_NOT_FOUND: i64 = 4;
pub const CODE_SIGNATURE_INVALID: i64 = 8;
pub const VALIDATION_FAILED: i64 = 9;
pub const FORBIDDEN_BY_SYSTEM_POLICY: i64 = 10;
pub const REQUEST_CANCELED: i64 = 11;
pub const AUTHORIZATION_REQUIRED: i64 = 13;

/// The reason a code stands for, as the error's description names it.
pub fn reason(code: i64) -> &'static str {
    match code {
        MISSING_ENTITLEMENT => "missing entitlement",
        UNSUPPORTED_PARENT_BUNDLE_LOCATION => "unsupported parent bundle location",
        EXTENSION_NOT_FOUND => "extension not found",
        CODE_SIGNATURE_INVALID => "code signature invalid",
        VALIDATION_FAILED => "validation failed",
        FORBIDDEN_BY_SYSTEM_POLICY => "forbidden by system policy",
        REQUEST_CANCELED => "request canceled",
        AUTHORIZATION_REQUIRED => "authorization required",
        _ => "unknown",
    }
}
