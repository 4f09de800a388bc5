//! Parsing the `Retry-After` header.

use std::time::{Duration, SystemTime};

use super::schema::MAX_DURATION;

/// The `Retry-After` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Retry-After value `{value}`: expected delay-seconds or an HTTP-date")]
pub struct InvalidRetryAfter {
    /// The value as received (trimmed, at most 64 characters).
    pub value: String,
}

/// Parses a `Retry-After` header value (RFC 9110 §10.2.3) into the wait it asks for,
/// measured from `now`.
///
/// Both forms are accepted: a non-negative integer of seconds (`"120"`), and an HTTP-date
/// in any of the three formats a recipient must accept (IMF-fixdate
/// `"Sun, 06 Nov 1994 08:49:37 GMT"`, the obsolete RFC 850 and asctime forms). A date in
/// the past means "retry now" (zero). Dates are read as the `httpdate` crate reads them:
/// from 1970 on, with a weekday that must match the date, and RFC 850's two-digit years
/// 70–99 as 19xx and 00–69 as 20xx; a date outside that is refused like any unreadable
/// value (a classifier then ignores the header). A wait longer than a record holds
/// ([`schema::MAX_DURATION`](super::schema::MAX_DURATION), about 31.7 years) saturates
/// there, so that the attempt's record stays valid: an upstream's absurd answer is no
/// reason to lose the record of the attempt that got it.
///
/// # Errors
/// [`InvalidRetryAfter`] when the value is neither form (negative numbers and fractions
/// included, which the grammar does not allow).
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use retrywise::attempt::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
/// assert_eq!(parse_retry_after("3", now).unwrap(), Duration::from_secs(3));
/// assert_eq!(
///     parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now).unwrap(),
///     Duration::from_secs(30)
/// );
/// assert!(parse_retry_after("soon", now).is_err());
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Result<Duration, InvalidRetryAfter> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: delay-seconds. Overflowing u64 saturates rather than failing.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Ok(Duration::from_secs(secs).min(MAX_DURATION));
    }
    match httpdate::parse_http_date(v) {
        Ok(at) => Ok(at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_DURATION)),
        Err(_) => Err(InvalidRetryAfter {
            value: v.chars().take(64).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_retry_after("0", now()).unwrap(), Duration::ZERO);
        assert_eq!(
            parse_retry_after(" 120 ", now()).unwrap(),
            Duration::from_secs(120)
        );
        // Beyond what a record holds: saturated there, and the record stays valid.
        for v in ["99999999999999999999999", "1000000001"] {
            assert_eq!(parse_retry_after(v, now()).unwrap(), MAX_DURATION);
        }
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now()).unwrap(),
            MAX_DURATION
        );
        let mut ctx = crate::attempt::AttemptContext::first("t");
        ctx.attempt = 2;
        ctx.error = Some(crate::attempt::ErrorKind::Http429);
        ctx.retry_after = Some(parse_retry_after("99999999999999999999999", now()).unwrap());
        assert_eq!(ctx.validate(), Ok(()));
    }

    #[test]
    fn all_three_date_formats() {
        let want = Duration::from_secs(60);
        for v in [
            "Sun, 06 Nov 1994 08:50:37 GMT",
            "Sunday, 06-Nov-94 08:50:37 GMT",
            "Sun Nov  6 08:50:37 1994",
        ] {
            assert_eq!(parse_retry_after(v, now()).unwrap(), want, "{v}");
        }
    }

    #[test]
    fn past_dates_mean_now() {
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now()).unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn garbage_is_refused() {
        for v in ["", "-1", "1.5", "tomorrow", "Sun, 99 Nov 1994 08:00:00 GMT"] {
            assert!(parse_retry_after(v, now()).is_err(), "{v}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = parse_retry_after(&s, now());
        }

        #[test]
        fn any_integer_parses(n in any::<u32>()) {
            prop_assert_eq!(
                parse_retry_after(&n.to_string(), now()).unwrap(),
                Duration::from_secs(u64::from(n)).min(MAX_DURATION)
            );
        }
    }
}
