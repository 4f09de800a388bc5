//! The error of every layer.

use std::fmt;

use super::BoxError;

/// The error of every retrywise layer: the inner service's error, or one of this crate's
/// rejections ([`CircuitOpen`](crate::breaker::CircuitOpen),
/// [`BulkheadFull`](crate::bulkhead::BulkheadFull), [`Elapsed`](crate::timeout::Elapsed),
/// [`GaveUp`](super::GaveUp), ...).
///
/// It is transparent: it displays as what it wraps, and its
/// [`source`](std::error::Error::source) is the wrapped error's own, so a printed chain
/// says each cause once (`reset by peer`, not `reset by peer: reset by peer`).
/// [`ErrorKind::from_error`](crate::attempt::ErrorKind::from_error) looks inside it to
/// classify. It implements [`std::error::Error`], so stacked layers can classify each
/// other's errors (`BoxError` alone cannot be classified: it does not implement `Error`).
/// Wrapping never nests: a layer's error wrapped by the next layer stays one level deep.
/// Use [`downcast_ref`](Self::downcast_ref) to tell the cases apart. It converts into a
/// `BoxError` for the rest of the tower ecosystem, boxed whole: code that asks a
/// `BoxError` what it is (`is::<tower::timeout::error::Elapsed>()`, an axum
/// `HandleErrorLayer`) wants [`into_inner`](Self::into_inner) first.
pub struct Error(BoxError);

impl Error {
    /// Wraps `e`, unwrapping it first if it already is an [`Error`].
    pub fn new(e: impl Into<BoxError>) -> Self {
        let boxed = e.into();
        match boxed.downcast::<Error>() {
            Ok(inner) => *inner,
            Err(other) => Error(other),
        }
    }

    /// The wrapped error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }

    /// The wrapped error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// The wrapped error, boxed.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_says_each_cause_once() {
        let e = Error::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        ));
        let mut chain = vec![e.to_string()];
        let mut cur = std::error::Error::source(&e);
        while let Some(s) = cur {
            chain.push(s.to_string());
            cur = s.source();
        }
        assert_eq!(chain, ["reset by peer"]);
        // ... and it is classified by what it wraps.
        assert_eq!(
            crate::attempt::ErrorKind::from_error(&e),
            crate::attempt::ErrorKind::Reset
        );
    }
}
