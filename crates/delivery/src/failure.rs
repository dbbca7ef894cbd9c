//! Why a delivery attempt failed: a [`Code`] (the destination's own status, or one of Tocsin's
//! 901–908), a reason fit for the undelivered record (never a secret), and whether trying again
//! can help ([`Retry`]). The code also says what kind of failure the metrics count it as: this
//! is the one table of Tocsin's codes (the failure-code table of docs/src/concepts.md
//! describes it).

use metrics::FailureKind;
use std::time::Duration;

/// What a failure's `code` in `failureReasons` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The destination answered with this HTTP status.
    Http(u16),
    /// The mail server answered with this SMTP reply code.
    Smtp(u16),
    /// 901: the job names an action that is no longer configured.
    ActionMissing,
    /// 902: no channel serves the action's type.
    UnsupportedType,
    /// 903: Tocsin could not record the outcome (or its own state) locally.
    LocalStorage,
    /// 904: the destination could not be reached, or the connection broke.
    Connection,
    /// 905: no answer in time, or no free slot for the destination in that time.
    Timeout,
    /// 906: the action's properties are missing or invalid, or a template does not render.
    BadAction,
    /// 907: the destination answered with success, but its answer reports an error or cannot
    /// be used (Slack `ok:false`, an incident created without an id).
    BadAnswer,
    /// 908: the destination's circuit is open; Tocsin waits for the next probe.
    CircuitOpen,
}

impl Code {
    /// The number written in `failureReasons`.
    pub fn number(self) -> i32 {
        match self {
            Code::Http(status) | Code::Smtp(status) => i32::from(status),
            Code::ActionMissing => 901,
            Code::UnsupportedType => 902,
            Code::LocalStorage => 903,
            Code::Connection => 904,
            Code::Timeout => 905,
            Code::BadAction => 906,
            Code::BadAnswer => 907,
            Code::CircuitOpen => 908,
        }
    }

    /// What the metrics count a failure with this code as.
    pub fn kind(self) -> FailureKind {
        match self {
            Code::Http(401 | 403 | 407) | Code::Smtp(530 | 534 | 535) => FailureKind::AuthError,
            Code::Http(429) => FailureKind::RateLimited,
            Code::Http(408 | 504) | Code::Timeout => FailureKind::Timeout,
            // SMTP 4xx is the server's trouble (try later); 5xx refuses the mail or recipient.
            Code::Smtp(421 | 450..=452) => FailureKind::ServerError,
            Code::Http(400..=499) | Code::Smtp(_) => FailureKind::ClientError,
            Code::Http(_) => FailureKind::ServerError,
            Code::ActionMissing | Code::UnsupportedType | Code::BadAction => {
                FailureKind::Configuration
            }
            Code::LocalStorage => FailureKind::Local,
            Code::Connection => FailureKind::Connection,
            Code::BadAnswer => FailureKind::BadAnswer,
            Code::CircuitOpen => FailureKind::CircuitOpen,
        }
    }
}

/// Whether, and when, a failed attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only fixing the action or the destination helps.
    Never,
    /// On the retry schedule.
    OnSchedule,
    /// After this long: the destination said so (`Retry-After`).
    After(Duration),
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: Code,
    pub reason: String,
    pub retry: Retry,
}

impl Failure {
    pub fn permanent(code: Code, reason: impl Into<String>) -> Self {
        Failure {
            code,
            reason: reason.into(),
            retry: Retry::Never,
        }
    }

    pub fn transient(code: Code, reason: impl Into<String>) -> Self {
        Failure {
            code,
            reason: reason.into(),
            retry: Retry::OnSchedule,
        }
    }

    /// Retryable, after `after` when the destination said how long to wait.
    pub fn transient_after(code: Code, reason: impl Into<String>, after: Option<Duration>) -> Self {
        Failure {
            code,
            reason: reason.into(),
            retry: after.map_or(Retry::OnSchedule, Retry::After),
        }
    }

    /// The action is configured wrongly: permanent until someone fixes it.
    pub fn bad_action(reason: impl Into<String>) -> Self {
        Failure::permanent(Code::BadAction, reason)
    }

    pub fn is_retryable(&self) -> bool {
        self.retry != Retry::Never
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_numbered_and_counted_as_the_docs_say() {
        let table = [
            (Code::Http(401), 401, "auth_error"),
            (Code::Http(429), 429, "rate_limited"),
            (Code::Http(504), 504, "timeout"),
            (Code::Http(404), 404, "client_error"),
            (Code::Http(503), 503, "server_error"),
            (Code::Smtp(535), 535, "auth_error"),
            (Code::Smtp(451), 451, "server_error"),
            (Code::Smtp(550), 550, "client_error"),
            (Code::ActionMissing, 901, "configuration"),
            (Code::UnsupportedType, 902, "configuration"),
            (Code::LocalStorage, 903, "local"),
            (Code::Connection, 904, "connection"),
            (Code::Timeout, 905, "timeout"),
            (Code::BadAction, 906, "configuration"),
            (Code::BadAnswer, 907, "bad_answer"),
            (Code::CircuitOpen, 908, "circuit_open"),
        ];
        for (code, number, kind) in table {
            assert_eq!(
                (code.number(), code.kind().as_str()),
                (number, kind),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_destinations_wait_becomes_the_retry() {
        let asked =
            Failure::transient_after(Code::Http(429), "slow down", Some(Duration::from_secs(7)));
        assert_eq!(asked.retry, Retry::After(Duration::from_secs(7)));
        let unasked = Failure::transient_after(Code::Http(503), "down", None);
        assert_eq!(unasked.retry, Retry::OnSchedule);
        assert!(!Failure::bad_action("x").is_retryable());
    }
}
