//! Tests that return `Result` so a failed step reads as one message.

use std::fmt;

/// A test failure carrying a readable message (Debug prints it as is, so `cargo test` shows
/// the error text rather than a struct dump).
pub struct Failure(pub String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub type TestResult<T = ()> = Result<T, Failure>;

/// `ensure!(cond, "format", args...)`: returns `Err(Failure(message))` from the enclosing
/// function unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::failure::Failure(format!($($msg)+)));
        }
    };
}
