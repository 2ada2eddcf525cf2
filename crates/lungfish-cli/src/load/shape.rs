//! Traffic shapes: the event rate a load run aims for at each moment since its start,
//! and the number of events due by then (the rate's integral, in closed form).
//!
//! The schedule of a run is open-loop: the request that completes event `n` is due at
//! [`Shape::time_of_event`]`(n)`, whatever happened to the requests before it.

use std::f64::consts::TAU;

/// The target event rate over the time since the start of a run, in seconds.
///
/// Rates are events per second; every rate and length is positive and finite, the
/// factor too, and a sine's amplitude is in `[0, 1]` (checked by [`Shape::validate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// A constant `rate`.
    Steady {
        /// Events per second.
        rate: f64,
    },
    /// `rate`, but `rate * factor` during `[at, at + length)`.
    Spike {
        /// Events per second outside the spike.
        rate: f64,
        /// Rate multiplier during the spike.
        factor: f64,
        /// Start of the spike, seconds.
        at: f64,
        /// Length of the spike, seconds.
        length: f64,
    },
    /// `rate`, but `rate * factor` during `[k * every, k * every + length)` for
    /// `k = 1, 2, ...`: a quiet first period, then a burst at the start of every period.
    Bursts {
        /// Events per second between bursts.
        rate: f64,
        /// Rate multiplier during a burst.
        factor: f64,
        /// Period of the bursts, seconds.
        every: f64,
        /// Length of one burst, seconds (at most `every`).
        length: f64,
    },
    /// `rate * (1 + amplitude * sin(2π t / period))`.
    Sine {
        /// Mean events per second.
        rate: f64,
        /// Period, seconds.
        period: f64,
        /// Relative amplitude, in `[0, 1]`.
        amplitude: f64,
    },
}

impl Shape {
    /// The shape's name as on the command line (`steady`, `spike`, `bursts`, `sine`).
    pub fn name(&self) -> &'static str {
        match self {
            Shape::Steady { .. } => "steady",
            Shape::Spike { .. } => "spike",
            Shape::Bursts { .. } => "bursts",
            Shape::Sine { .. } => "sine",
        }
    }

    /// Checks the parameters: an error message for the user if one is out of range.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{what} must be above 0 (got {v})"))
            }
        };
        match *self {
            Shape::Steady { rate } => positive("--rate", rate),
            Shape::Spike {
                rate,
                factor,
                at,
                length,
            } => {
                positive("--rate", rate)?;
                positive("--spike-factor", factor)?;
                positive("--spike-for", length)?;
                if at.is_finite() && at >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("--spike-at must be 0 or more (got {at})"))
                }
            }
            Shape::Bursts {
                rate,
                factor,
                every,
                length,
            } => {
                positive("--rate", rate)?;
                positive("--spike-factor", factor)?;
                positive("--burst-every", every)?;
                positive("--burst-for", length)?;
                if length <= every {
                    Ok(())
                } else {
                    Err(format!(
                        "--burst-for ({length} s) must not be longer than --burst-every ({every} s)"
                    ))
                }
            }
            Shape::Sine {
                rate,
                period,
                amplitude,
            } => {
                positive("--rate", rate)?;
                positive("--period", period)?;
                if (0.0..=1.0).contains(&amplitude) {
                    Ok(())
                } else {
                    Err(format!(
                        "--amplitude must be between 0 and 1 (got {amplitude})"
                    ))
                }
            }
        }
    }

    /// The target rate at `t` seconds, events per second (0 before the start).
    pub fn rate_at(&self, t: f64) -> f64 {
        if t < 0.0 {
            return 0.0;
        }
        match *self {
            Shape::Steady { rate } => rate,
            Shape::Spike { rate, factor, .. } | Shape::Bursts { rate, factor, .. } => {
                if self.is_high(t) == Some(true) {
                    rate * factor
                } else {
                    rate
                }
            }
            Shape::Sine {
                rate,
                period,
                amplitude,
            } => rate * (1.0 + amplitude * (TAU * t / period).sin()),
        }
    }

    /// Events due by `t` seconds: the integral of [`Shape::rate_at`] over `[0, t]`.
    pub fn events_due_by(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        match *self {
            Shape::Steady { rate } => rate * t,
            Shape::Spike { rate, factor, .. } | Shape::Bursts { rate, factor, .. } => {
                rate * t + rate * (factor - 1.0) * self.high_time(t)
            }
            Shape::Sine {
                rate,
                period,
                amplitude,
            } => rate * (t + amplitude * period / TAU * (1.0 - (TAU * t / period).cos())),
        }
    }

    /// The earliest time, in seconds, by which `n` events are due: the inverse of
    /// [`Shape::events_due_by`]. Closed form except for the sine (bisection).
    pub fn time_of_event(&self, n: f64) -> f64 {
        if n <= 0.0 {
            return 0.0;
        }
        match *self {
            Shape::Steady { rate } => n / rate,
            Shape::Spike {
                rate,
                factor,
                at,
                length,
            } => {
                let before = rate * at;
                let during = rate * factor * length;
                if n <= before {
                    n / rate
                } else if n <= before + during {
                    at + (n - before) / (rate * factor)
                } else {
                    at + length + (n - before - during) / rate
                }
            }
            Shape::Bursts {
                rate,
                factor,
                every,
                length,
            } => {
                let first = rate * every;
                if n <= first {
                    return n / rate;
                }
                let burst = rate * factor * length;
                let cycle = burst + rate * (every - length);
                let rest = n - first;
                let k = (rest / cycle).floor();
                let r = rest - k * cycle;
                let start = (k + 1.0) * every;
                if r <= burst {
                    start + r / (rate * factor)
                } else {
                    start + length + (r - burst) / rate
                }
            }
            Shape::Sine {
                rate,
                period,
                amplitude,
            } => {
                // rate * t <= events_due_by(t) <= rate * t + rate * amplitude * period / π,
                // so the answer lies in this bracket; events_due_by is nondecreasing.
                let mut hi = n / rate;
                let mut lo = (hi - amplitude * period / std::f64::consts::PI).max(0.0);
                for _ in 0..100 {
                    let mid = 0.5 * (lo + hi);
                    if mid <= lo || mid >= hi {
                        break;
                    }
                    if self.events_due_by(mid) >= n {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi
            }
        }
    }

    /// For shapes with a high-rate phase (spike, bursts): whether `t` is in it.
    /// `None` for steady and sine.
    pub fn is_high(&self, t: f64) -> Option<bool> {
        match *self {
            Shape::Spike { at, length, .. } => Some(t >= at && t < at + length),
            Shape::Bursts { every, length, .. } => {
                let k = (t / every).floor();
                Some(k >= 1.0 && t - k * every < length)
            }
            Shape::Steady { .. } | Shape::Sine { .. } => None,
        }
    }

    /// Names of the report rows for requests due in the high-rate phase and for the
    /// others, for shapes that have one.
    pub fn phase_names(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Shape::Spike { .. } => Some(("due in the spike", "due outside the spike")),
            Shape::Bursts { .. } => Some(("due in a burst", "due between bursts")),
            Shape::Steady { .. } | Shape::Sine { .. } => None,
        }
    }

    /// Seconds of `[0, t]` spent in the high-rate phase (0 for shapes without one).
    fn high_time(&self, t: f64) -> f64 {
        match *self {
            Shape::Spike { at, length, .. } => (t - at).clamp(0.0, length),
            Shape::Bursts { every, length, .. } => {
                let k = (t / every).floor();
                if k < 1.0 {
                    0.0
                } else {
                    (k - 1.0) * length + (t - k * every).min(length)
                }
            }
            Shape::Steady { .. } | Shape::Sine { .. } => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
    }

    /// The integral by the midpoint rule, to check the closed forms against the rate.
    fn numeric_integral(shape: &Shape, t: f64) -> f64 {
        let steps = 200_000;
        let dt = t / steps as f64;
        (0..steps)
            .map(|i| shape.rate_at((i as f64 + 0.5) * dt) * dt)
            .sum()
    }

    fn shapes() -> [Shape; 4] {
        [
            Shape::Steady { rate: 1000.0 },
            Shape::Spike {
                rate: 1000.0,
                factor: 20.0,
                at: 10.0,
                length: 10.0,
            },
            Shape::Bursts {
                rate: 1000.0,
                factor: 5.0,
                every: 5.0,
                length: 1.0,
            },
            Shape::Sine {
                rate: 1000.0,
                period: 20.0,
                amplitude: 0.8,
            },
        ]
    }

    #[test]
    fn spike_window_holds_factor_times_base_events() {
        let s = Shape::Spike {
            rate: 1000.0,
            factor: 20.0,
            at: 10.0,
            length: 10.0,
        };
        let in_spike = s.events_due_by(20.0) - s.events_due_by(10.0);
        assert!(close(in_spike, 10.0 * 1000.0 * 20.0), "{in_spike}");
        assert!(close(s.events_due_by(10.0), 10_000.0));
        assert!(close(
            s.events_due_by(30.0),
            10_000.0 + 200_000.0 + 10_000.0
        ));
        assert_eq!(s.rate_at(9.999), 1000.0);
        assert_eq!(s.rate_at(10.0), 20_000.0);
        assert_eq!(s.rate_at(20.0), 1000.0);
        assert_eq!(s.is_high(15.0), Some(true));
        assert_eq!(s.is_high(25.0), Some(false));
    }

    #[test]
    fn bursts_start_after_one_quiet_period() {
        let s = Shape::Bursts {
            rate: 100.0,
            factor: 10.0,
            every: 5.0,
            length: 1.0,
        };
        assert!(close(s.events_due_by(5.0), 500.0));
        // [5, 6) is a burst: 1000 events; [6, 10) is quiet: 400.
        assert!(close(s.events_due_by(6.0), 1500.0));
        assert!(close(s.events_due_by(10.0), 1900.0));
        assert!(close(s.events_due_by(10.5), 2400.0));
        assert_eq!(s.rate_at(4.9), 100.0);
        assert_eq!(s.rate_at(5.5), 1000.0);
        assert_eq!(s.rate_at(7.0), 100.0);
        assert_eq!(s.is_high(0.5), Some(false));
        assert_eq!(s.is_high(15.2), Some(true));
    }

    #[test]
    fn sine_integral_over_a_period_is_the_mean_rate() {
        let s = Shape::Sine {
            rate: 1000.0,
            period: 20.0,
            amplitude: 0.8,
        };
        assert!(close(s.events_due_by(20.0), 20_000.0));
        assert!(close(s.events_due_by(40.0), 40_000.0));
        // The first half-period is the high one: 1000 * (10 + 0.8 * 20/2π * 2).
        let half = 1000.0 * (10.0 + 0.8 * 20.0 / TAU * 2.0);
        assert!(close(s.events_due_by(10.0), half));
        assert!(close(s.rate_at(5.0), 1800.0));
        assert!(close(s.rate_at(15.0), 200.0));
    }

    #[test]
    fn closed_forms_match_the_integral_of_the_rate() {
        for s in shapes() {
            for t in [0.3, 4.0, 5.5, 9.99, 12.0, 21.7, 33.0] {
                let (a, b) = (s.events_due_by(t), numeric_integral(&s, t));
                assert!(
                    (a - b).abs() < 1e-3 * b.max(1.0),
                    "{s:?} at {t}: {a} != {b}"
                );
            }
        }
    }

    #[test]
    fn time_of_event_inverts_events_due_by() {
        for s in shapes() {
            for n in [1.0, 999.0, 5000.0, 10_000.0, 12_345.0, 150_000.0, 210_000.0] {
                let t = s.time_of_event(n);
                assert!(close(s.events_due_by(t), n), "{s:?}: n {n}, t {t}");
                // And it is the earliest such time.
                assert!(s.events_due_by(t - 1e-3) < n, "{s:?}: n {n}, t {t}");
            }
            assert_eq!(s.time_of_event(0.0), 0.0);
        }
    }

    #[test]
    fn validate_rejects_out_of_range_parameters() {
        assert!(Shape::Steady { rate: 0.0 }.validate().is_err());
        assert!(
            Shape::Sine {
                rate: 1.0,
                period: 1.0,
                amplitude: 1.5
            }
            .validate()
            .is_err()
        );
        assert!(
            Shape::Bursts {
                rate: 1.0,
                factor: 2.0,
                every: 1.0,
                length: 2.0
            }
            .validate()
            .is_err()
        );
        for s in shapes() {
            assert_eq!(s.validate(), Ok(()));
        }
    }
}
