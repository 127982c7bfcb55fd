//! Budget windows: which `[start, end)` contains an instant.
//!
//! Rules: a window is calendar-aligned in the budget's IANA time zone (`Daily` from local
//! midnight, `Weekly` from Monday 00:00, `Monthly` from `anchorDay` 00:00 clamped to the
//! month's length; in a DST gap the first instant after local midnight) or `Rolling`:
//! consecutive windows of `duration` aligned to the Unix epoch, so every evaluator computes the
//! same windows and a restart does not move them. Errors name the field.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::money::parse_duration_ms;
use crate::api::{BudgetWindow, Period};

/// The window `[start, end)` containing `now`.
pub fn window_for(window: &BudgetWindow, now: Timestamp) -> Result<(Timestamp, Timestamp), String> {
    if window.period == Period::Rolling {
        let raw = window.duration.as_deref().unwrap_or("");
        let d = parse_duration_ms(raw).map_err(|e| format!("spec.window.duration: {e}"))?;
        if d <= 0 {
            return Err(format!("spec.window.duration: {raw:?} must be longer than zero"));
        }
        // Consecutive windows of `duration` aligned to the Unix epoch.
        let start = now.as_millisecond().div_euclid(d).saturating_mul(d);
        let s = Timestamp::from_millisecond(start).map_err(|e| format!("spec.window.duration: {e}"))?;
        let e = Timestamp::from_millisecond(start.saturating_add(d))
            .map_err(|_| format!("spec.window.duration: {raw:?} is too long"))?;
        return Ok((s, e));
    }
    let tz = TimeZone::get(&window.time_zone)
        .map_err(|e| format!("spec.window.timeZone: {:?} is not a known IANA time zone ({e})", window.time_zone))?;
    let today = now.to_zoned(tz.clone()).date();
    let err = |e: jiff::Error| format!("spec.window: cannot compute the window: {e}");
    let (start, end) = match window.period {
        Period::Daily => (today, today.tomorrow().map_err(err)?),
        Period::Weekly => {
            let back = i64::from(today.weekday().to_monday_zero_offset());
            let start = today.checked_sub(jiff::Span::new().days(back)).map_err(err)?;
            (start, start.checked_add(jiff::Span::new().days(7)).map_err(err)?)
        }
        Period::Monthly | Period::Rolling => {
            let anchor = window.anchor_day.clamp(1, 31) as i8;
            let this = anchored(today.first_of_month(), anchor).map_err(err)?;
            let start = if today >= this {
                this
            } else {
                let prev_month = today.first_of_month().yesterday().map_err(err)?.first_of_month();
                anchored(prev_month, anchor).map_err(err)?
            };
            let next_month = start.last_of_month().tomorrow().map_err(err)?;
            (start, anchored(next_month, anchor).map_err(err)?)
        }
    };
    // Local midnight; in a DST gap jiff picks the first instant after it.
    let s = start.to_zoned(tz.clone()).map_err(err)?.timestamp();
    let e = end.to_zoned(tz).map_err(err)?.timestamp();
    Ok((s, e))
}

/// Day `anchor` of the month of `first`, clamped to the month's length.
fn anchored(first: Date, anchor: i8) -> Result<Date, jiff::Error> {
    let day = anchor.min(first.days_in_month());
    Date::new(first.year(), first.month(), day)
}
