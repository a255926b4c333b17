//! The kernel's state machine: its seven states and the Python library's
//! transition matrix. HALTED is terminal for a session; only an audited
//! recovery (an operational event, not a transition of this matrix) starts a
//! new session.

use serde::{Deserialize, Serialize};

/// A state of the kernel state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Not yet booted.
    Booting,
    /// Ready for a request.
    Idle,
    /// Checking a request's structure and ambiguity.
    Validating,
    /// Checking permits, jurisdiction and variant rules.
    Arbitrating,
    /// Running an allowed tool.
    Executing,
    /// Recording the decision.
    Auditing,
    /// Stopped; refuses every request until an operator recovers it.
    Halted,
}

impl State {
    /// The name as written in entries (`"IDLE"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Booting => "BOOTING",
            State::Idle => "IDLE",
            State::Validating => "VALIDATING",
            State::Arbitrating => "ARBITRATING",
            State::Executing => "EXECUTING",
            State::Auditing => "AUDITING",
            State::Halted => "HALTED",
        }
    }

    /// Parses an entry's state name.
    pub fn parse(name: &str) -> Option<State> {
        Some(match name {
            "BOOTING" => State::Booting,
            "IDLE" => State::Idle,
            "VALIDATING" => State::Validating,
            "ARBITRATING" => State::Arbitrating,
            "EXECUTING" => State::Executing,
            "AUDITING" => State::Auditing,
            "HALTED" => State::Halted,
            _ => return None,
        })
    }

    /// The states reachable from `self` in one step.
    pub fn next_states(self) -> &'static [State] {
        use State::*;
        match self {
            Booting => &[Idle, Halted],
            Idle => &[Validating, Halted],
            Validating => &[Arbitrating, Auditing, Halted],
            Arbitrating => &[Executing, Auditing, Halted],
            Executing => &[Auditing, Halted],
            Auditing => &[Idle, Halted],
            Halted => &[],
        }
    }

    /// Whether `self -> to` is a legal transition.
    pub fn can_transition(self, to: State) -> bool {
        self.next_states().contains(&to)
    }

    /// Whether no transition leaves this state.
    pub fn is_terminal(self) -> bool {
        self.next_states().is_empty()
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step the transition matrix does not allow: a bug in the decision
/// code, never a consequence of input. The decision is refused (nothing is
/// recorded) instead of panicking under the ledger's lock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from} -> {to} (after {path:?})")]
pub struct IllegalTransition {
    /// Where the walk was.
    pub from: State,
    /// Where it was told to go.
    pub to: State,
    /// The states visited before.
    pub path: Vec<State>,
}

/// Follows a request through the machine, refusing illegal steps.
#[derive(Debug, Clone)]
pub struct Walk {
    path: Vec<State>,
}

impl Walk {
    /// Starts a walk in `state`.
    pub fn from(state: State) -> Self {
        Walk { path: vec![state] }
    }

    /// The current state.
    pub fn current(&self) -> State {
        *self.path.last().expect("a walk is never empty")
    }

    /// Moves to `to`, or answers why it may not.
    pub fn go(&mut self, to: State) -> Result<(), IllegalTransition> {
        let from = self.current();
        if !from.can_transition(to) {
            return Err(IllegalTransition {
                from,
                to,
                path: self.path.clone(),
            });
        }
        self.path.push(to);
        Ok(())
    }

    /// Moves to `to` unless already there (the library's `_deny_request` idiom).
    pub fn go_if_not(&mut self, to: State) -> Result<(), IllegalTransition> {
        if self.current() != to {
            self.go(to)?;
        }
        Ok(())
    }

    /// Every state visited, in order.
    pub fn path(&self) -> &[State] {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halted_is_the_only_terminal_state() {
        use State::*;
        for s in [
            Booting,
            Idle,
            Validating,
            Arbitrating,
            Executing,
            Auditing,
            Halted,
        ] {
            assert_eq!(s.is_terminal(), s == Halted);
            assert_eq!(State::parse(s.as_str()), Some(s));
            if s != Halted {
                assert!(s.can_transition(Halted), "{s} must be able to halt");
            }
        }
        assert!(!Idle.can_transition(Executing));
        assert!(!Halted.can_transition(Idle));
    }

    #[test]
    fn a_walk_records_its_path() {
        let mut w = Walk::from(State::Idle);
        w.go(State::Validating).unwrap();
        w.go(State::Auditing).unwrap();
        w.go_if_not(State::Auditing).unwrap();
        w.go(State::Idle).unwrap();
        assert_eq!(
            w.path(),
            &[State::Idle, State::Validating, State::Auditing, State::Idle]
        );
    }

    #[test]
    fn an_illegal_step_is_refused_as_an_error() {
        let mut w = Walk::from(State::Idle);
        let err = w.go(State::Executing).unwrap_err();
        assert_eq!((err.from, err.to), (State::Idle, State::Executing));
        assert!(
            err.to_string()
                .starts_with("illegal transition IDLE -> EXECUTING")
        );
        assert_eq!(w.path(), &[State::Idle], "a refused step is not taken");
    }
}
