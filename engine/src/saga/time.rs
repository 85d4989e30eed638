//! Time as data: the core never reads a clock; "now" is an argument.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in milliseconds since the Unix epoch. Serialized as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

pub use crate::dsl::spec::MAX_DURATION;

impl Timestamp {
    /// The latest time there is: 9999-12-31T23:59:59.999Z (RFC 3339 has four
    /// digits for the year). Arithmetic stops here rather than overflowing.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    pub fn from_millis(ms: u64) -> Self {
        Self(ms.min(Self::MAX.0))
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    /// `self + d`, held at [`Timestamp::MAX`].
    pub fn plus(self, d: Duration) -> Self {
        self.checked_plus(d).unwrap_or(Self::MAX)
    }

    /// `self + d`, or `None` past [`Timestamp::MAX`].
    pub fn checked_plus(self, d: Duration) -> Option<Self> {
        let ms = u64::try_from(d.as_millis()).ok()?;
        let t = self.0.checked_add(ms)?;
        (t <= Self::MAX.0).then_some(Self(t))
    }

    /// How long from `self` until `later` (zero if `later` is not later).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.min(Self::MAX.0))
    }
}

impl Timestamp {
    /// RFC 3339 in UTC with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`, as
    /// humantime's `format_rfc3339_millis` writes it. Written here because
    /// an order saga writes about a dozen times into its events and answers,
    /// and going through the formatting machinery twice (humantime's
    /// `Display` inside ours) cost more than the arithmetic.
    fn rfc3339(self) -> [u8; 24] {
        const DAY: u64 = 86_400_000;
        let ms = self.0.min(Self::MAX.0);
        let (days, rest) = (ms / DAY, ms % DAY);
        // days since 1970-01-01 to a civil date: Howard Hinnant's
        // `civil_from_days`, on eras of 400 years starting on a 1 March
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, rest / 3_600_000);
        put(14, 2, rest / 60_000 % 60);
        put(17, 2, rest / 1_000 % 60);
        put(20, 3, rest % 1_000);
        out
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.rfc3339();
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.rfc3339();
        s.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Self::from_millis(
            u64::try_from(ms).map_err(serde::de::Error::custom)?,
        ))
    }
}

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicU64::new(start.0))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    pub fn set(&self, to: Timestamp) {
        self.0.store(to.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_rfc3339() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn arithmetic_stops_at_the_end_of_the_calendar() {
        let now = Timestamp(1_795_000_000_123);
        let far = Duration::from_secs(20_000_000 * 365 * 24 * 3600);
        assert_eq!(now.checked_plus(far), None);
        assert_eq!(now.plus(far), Timestamp::MAX);
        assert_eq!(now.plus(Duration::MAX), Timestamp::MAX);
        assert_eq!(Timestamp(u64::MAX).to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
        assert!(now.checked_plus(MAX_DURATION).is_some());
    }

    fn humantime(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    #[test]
    fn written_as_humantime_writes_it_at_the_calendar_edges() {
        for ms in [
            0,
            999,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            951_868_800_000,   // 2000-03-01
            4_107_542_400_000, // 2100-03-01 (no 29 February)
            4_107_542_399_999,
            Timestamp::MAX.0,
        ] {
            assert_eq!(Timestamp(ms).to_string(), humantime(ms), "{ms}");
        }
    }

    proptest::proptest! {
        #[test]
        fn written_as_humantime_writes_it(ms in 0..=Timestamp::MAX.0) {
            proptest::prop_assert_eq!(Timestamp(ms).to_string(), humantime(ms));
            let json = serde_json::to_string(&Timestamp(ms)).unwrap();
            proptest::prop_assert_eq!(json, format!("\"{}\"", humantime(ms)));
        }
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Timestamp(3000));
    }
}
