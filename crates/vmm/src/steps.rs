//! Step timings of a multi-step operation (loading a snapshot file, creating an instance),
//! kept with its result so that a benchmark can say where the time went without a profiler.
//!
//! Taking the time costs ~20-30 ns a step (a vDSO clock read), nothing next to the steps.

use std::time::{Duration, Instant};

/// Named steps and how long each took, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steps {
    steps: Vec<(&'static str, Duration)>,
}

/// Records [`Steps`]: each [`StepClock::step`] ends the step that began at the previous one.
#[derive(Debug)]
pub struct StepClock {
    steps: Steps,
    since: Instant,
}

impl StepClock {
    /// A clock whose first step begins now.
    pub fn start() -> StepClock {
        StepClock { steps: Steps::default(), since: Instant::now() }
    }

    /// Ends the current step as `name`; the next one begins now.
    pub fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.steps.push((name, now - self.since));
        self.since = now;
    }

    /// The steps recorded.
    pub fn finish(self) -> Steps {
        self.steps
    }
}

impl Steps {
    /// The steps, in order.
    pub fn as_slice(&self) -> &[(&'static str, Duration)] {
        &self.steps
    }

    /// Adds a step timed elsewhere.
    pub fn push(&mut self, name: &'static str, took: Duration) {
        self.steps.push((name, took));
    }

    /// Their total.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_kept_in_order_and_add_up() {
        let mut c = StepClock::start();
        c.step("a");
        std::thread::sleep(Duration::from_millis(2));
        c.step("b");
        let s = c.finish();
        let names: Vec<_> = s.as_slice().iter().map(|s| s.0).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(s.as_slice()[1].1 >= Duration::from_millis(2));
        assert_eq!(s.total(), s.as_slice()[0].1 + s.as_slice()[1].1);
    }
}
