//! Given/when/then tests of the pure kernel: given these entries, when this
//! request or event, then this decision, this entry and this state.

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn policy() -> Policy {
    Policy::from_yaml(
        "allowed_actors: [alice, bob]\nallowed_tools: [echo, add, ghost]\nmax_intent_length: 64\nmax_param_bytes: 256\n",
    )
    .unwrap()
}

fn kernel(variant: Variant) -> MemoryKernel {
    MemoryKernel::create("k-test", variant, &policy(), 1_000).unwrap()
}

/// A decision context at `now_ms`: no permit keys, no external tools, native entries.
pub(super) fn ctx(now_ms: u64) -> DecideContext<'static> {
    static EMPTY: std::sync::LazyLock<Keyring> = std::sync::LazyLock::new(Keyring::new);
    DecideContext {
        now_ms,
        keyring: &EMPTY,
        jurisdiction: "default",
        external_tools: &crate::kernel::decide::NO_EXTERNAL_TOOLS,
        compat: Compat::Native,
    }
}

fn submit(k: &mut MemoryKernel, request: Value, now_ms: u64) -> Receipt {
    let raw = RawRequest::from_value(request).unwrap();
    k.submit(&raw, &ctx(now_ms)).unwrap()
}

#[test]
fn given_a_new_kernel_then_it_is_idle_with_policy_version_1() {
    let k = kernel(Variant::Strict);
    assert_eq!(k.state.state, State::Idle);
    assert_eq!(k.state.policy_version, 1);
    assert_eq!(k.entries.len(), 1);
    assert_eq!(k.entries[0].tool_name.as_deref(), Some("kernel.create"));
    assert_eq!(k.entries[0].payload_matches(), Some(Ok(true)));
}

#[test]
fn when_an_allowed_tool_is_called_then_it_runs_and_is_recorded() {
    let mut k = kernel(Variant::Strict);
    let r = submit(
        &mut k,
        json!({"request_id": "r1", "actor": "alice", "intent": "say hi",
               "tool_call": {"name": "echo", "params": {"text": "hi"}}, "params": {"text": "hi"}, "evidence": "ticket 7"}),
        2_000,
    );
    assert_eq!(r.status, Status::Accepted);
    assert_eq!(r.decision, "ALLOW");
    assert_eq!(r.tool_result, Some(json!("hi")));
    assert_eq!(r.ledger_seq, 1);
    let e = &k.entries[1];
    assert_eq!(r.evidence_hash, e.entry_hash);
    assert_eq!(e.ts_ms, 2_000);
    assert_eq!(e.tool_name.as_deref(), Some("echo"));
    assert!(e.params_hash.is_some() && e.evidence_hash.is_some());
    assert_eq!(e.prev_hash, k.entries[0].entry_hash);
    assert_eq!(k.state.counters.by_tool["echo"], 1);
}

#[test]
fn when_a_request_breaks_policy_then_every_violation_is_listed() {
    let mut k = kernel(Variant::Strict);
    let r = submit(
        &mut k,
        json!({"request_id": "r2", "actor": "mallory", "intent": "x".repeat(65),
               "tool_call": {"name": "rm"}}),
        2_000,
    );
    assert_eq!(r.status, Status::Rejected);
    assert_eq!(
        r.error.as_deref(),
        Some(
            "Jurisdiction denied: Actor 'mallory' is not in allowed actors; Tool 'rm' is not in allowed tools; Intent length (65) exceeds maximum (64)"
        )
    );
    let e = &k.entries[1];
    assert_eq!(e.decision, "DENY");
    assert_eq!(
        (e.tool_name.as_deref(), e.params_hash.as_ref()),
        (Some("rm"), None),
        "a denied entry names the tool it asked for"
    );
}

#[test]
fn when_the_tool_is_not_registered_then_the_receipt_is_failed() {
    let mut k = kernel(Variant::Strict);
    let r = submit(
        &mut k,
        json!({"request_id": "r3", "actor": "bob", "intent": "haunt", "tool_call": {"name": "ghost"}}),
        2_000,
    );
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.decision, "DENY");
    assert_eq!(
        r.error.as_deref(),
        Some("Tool execution failed: Tool 'ghost' is not registered")
    );
    assert_eq!(k.state.counters.by_status["FAILED"], 1);
}

#[test]
fn when_halted_then_requests_are_refused_and_nothing_is_recorded() {
    let mut k = kernel(Variant::Strict);
    k.halt(3_000, "ops@example", "incident 42").unwrap();
    assert!(k.state.is_halted());
    let before = k.entries.len();
    let raw = RawRequest::from_value(json!({"request_id": "r4", "actor": "alice", "intent": "x"}))
        .unwrap();
    assert_eq!(
        k.submit(&raw, &ctx(4_000)),
        Err(Refusal::Halted("incident 42".into()))
    );
    assert_eq!(k.entries.len(), before);
    assert_eq!(
        k.halt(5_000, "ops", "again"),
        Err(EventError::AlreadyHalted)
    );
    let halt = k.entries.last().unwrap();
    assert_eq!(
        (
            halt.request_id.as_str(),
            halt.decision.as_str(),
            halt.state_to.as_str(),
            halt.intent.as_str()
        ),
        ("HALT", "HALT", "HALTED", "incident 42")
    );
}

#[test]
fn when_recovered_then_a_new_session_starts_linked_to_the_halted_root() {
    let mut k = kernel(Variant::Strict);
    k.halt(3_000, "ops", "incident").unwrap();
    let halted_root = k.state.head.hash.clone();
    let body = k.state.recover_event(4_000, "ops", "fixed").unwrap();
    let entry = k.record(body).clone();
    assert_eq!(
        entry.payload.as_ref().unwrap()["halted_root_hash"],
        json!(halted_root)
    );
    assert_eq!(k.state.state, State::Idle);
    assert_eq!(k.state.session, 2);
    let r = submit(
        &mut k,
        json!({"request_id": "r5", "actor": "alice", "intent": "back"}),
        5_000,
    );
    assert_eq!(r.decision, "ALLOW");
}

#[test]
fn when_the_policy_is_updated_then_replay_until_a_seq_shows_the_policy_of_that_time() {
    let mut k = kernel(Variant::Strict);
    submit(
        &mut k,
        json!({"request_id": "a", "actor": "carol", "intent": "hello"}),
        2_000,
    );
    let mut wider = policy();
    wider.allowed_actors.insert("carol".into());
    let body = k
        .state
        .policy_update_event(
            3_000,
            "ops",
            &wider,
            "onboard carol",
            events::POLICY_FROM_API,
        )
        .unwrap();
    k.record(body);
    let r = submit(
        &mut k,
        json!({"request_id": "b", "actor": "carol", "intent": "hello"}),
        4_000,
    );
    assert_eq!(r.decision, "ALLOW");
    k.halt(5_000, "ops", "done").unwrap();

    let at_3 = KernelState::replay(&k.entries[..4]).unwrap();
    assert_eq!(at_3.policy_version, 2);
    assert_eq!(at_3.policy.as_ref(), Some(&wider));
    assert_eq!(at_3.state, State::Idle);
    let at_1 = KernelState::replay(&k.entries[..2]).unwrap();
    assert_eq!(at_1.policy_version, 1);
    assert_eq!(KernelState::replay(&k.entries).unwrap(), k.state);
}

#[test]
fn when_validation_fails_then_it_is_a_recorded_denial() {
    let mut k = kernel(Variant::Strict);
    let r = submit(
        &mut k,
        json!({"request_id": "v", "actor": "alice", "intent": null, "params": 3}),
        2_000,
    );
    assert_eq!(
        r.error.as_deref(),
        Some("Validation failed: intent is required; params must be a dictionary")
    );
    assert_eq!(k.entries.len(), 2);
}

#[test]
fn permits_are_required_verified_and_counted_by_replay() {
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let keyring: Keyring = [("k1".to_owned(), key.clone())].into();
    let ctx = DecideContext {
        now_ms: 2_000,
        keyring: &keyring,
        jurisdiction: "default",
        external_tools: &crate::kernel::decide::NO_EXTERNAL_TOOLS,
        compat: Compat::Native,
    };
    let mut k = kernel(Variant::Strict);
    let token = PermitToken {
        permit_id: String::new(),
        issuer: "ops".into(),
        subject: "alice".into(),
        jurisdiction: "default".into(),
        action: "echo".into(),
        params: json!({"text": "hi"}).as_object().unwrap().clone(),
        constraints: Default::default(),
        max_executions: 1,
        valid_from_ms: 0,
        valid_until_ms: 10_000,
        evidence_hash: String::new(),
        proposal_hash: "proposal".into(),
        nonce: "n".repeat(32),
        signature: String::new(),
        key_id: String::new(),
    }
    .sign("k1", &key);
    let req = |id: &str, permit: Option<&PermitToken>| {
        let mut v = json!({"request_id": id, "actor": "alice", "intent": "echo",
            "tool_call": {"name": "echo", "params": {"text": "hi"}}, "params": {"text": "hi"}});
        if let Some(p) = permit {
            v["permit"] = p.to_value();
        }
        RawRequest::from_value(v).unwrap()
    };
    let r = k.submit(&req("p0", None), &ctx).unwrap();
    assert_eq!(r.error.as_deref(), Some("MISSING_PERMIT"));
    let r = k.submit(&req("p1", Some(&token)), &ctx).unwrap();
    assert_eq!(r.decision, "ALLOW", "{r:?}");
    let e = k.entries.last().unwrap();
    assert_eq!(e.permit_verification.as_deref(), Some("ALLOW"));
    assert_eq!(e.permit_nonce.as_deref(), Some(token.nonce.as_str()));
    // A restart is a replay: the nonce stays used.
    let mut replayed = MemoryKernel {
        state: KernelState::replay(&k.entries).unwrap(),
        entries: k.entries.clone(),
    };
    let r = replayed.submit(&req("p2", Some(&token)), &ctx).unwrap();
    assert_eq!(
        r.error.as_deref(),
        Some("Permit verification failed: REPLAY_DETECTED")
    );
    assert_eq!(
        replayed.entries.last().unwrap().permit_denial_reasons,
        Some(vec!["REPLAY_DETECTED".to_owned()])
    );
}

#[test]
fn when_a_request_uses_a_reserved_id_then_the_kernel_refuses_it() {
    let mut k = kernel(Variant::Strict);
    for id in ["HALT", "kernel.recover", "kernel.x"] {
        let raw =
            RawRequest::from_value(json!({"request_id": id, "actor": "alice", "intent": "x"}))
                .unwrap();
        assert_eq!(
            k.submit(&raw, &ctx(2_000)),
            Err(Refusal::ReservedId(id.into()))
        );
    }
    assert_eq!(k.entries.len(), 1, "nothing is recorded");
    let r = submit(
        &mut k,
        json!({"request_id": "kernel", "actor": "alice", "intent": "x"}),
        2_000,
    );
    assert_eq!(
        r.decision, "ALLOW",
        "only the exact reserved forms are refused"
    );
}

#[test]
fn when_a_denied_request_names_an_event_as_its_tool_then_replay_does_not_take_it_for_one() {
    let mut k = kernel(Variant::Strict);
    k.halt(2_000, "ops", "incident").unwrap();
    k.record(k.state.recover_event(2_500, "ops", "fixed").unwrap());
    let r = submit(
        &mut k,
        json!({"request_id": "sneaky", "actor": "mallory", "intent": "x",
               "tool_call": {"name": "kernel.recover"}}),
        3_000,
    );
    assert_eq!(r.decision, "DENY");
    let e = k.entries.last().unwrap();
    assert_eq!(e.tool_name.as_deref(), Some("kernel.recover"));
    assert_eq!(state::event::of(e), None);
    assert_eq!(k.state.session, 2, "the denial is no recovery");
    assert_eq!(k.state.counters.by_event.get("kernel.recover"), Some(&1));
    assert_eq!(k.state.counters.by_decision["DENY"], 1);
    assert_eq!(KernelState::replay(&k.entries).unwrap(), k.state);
}

#[test]
fn in_python_compat_a_denied_entry_has_no_tool_name() {
    let mut k = kernel(Variant::Strict);
    let raw = RawRequest::from_value(json!({"request_id": "d", "actor": "mallory", "intent": "x",
        "tool_call": {"name": "rm"}}))
    .unwrap();
    let python = DecideContext {
        compat: Compat::Python,
        ..ctx(2_000)
    };
    let r = k.submit(&raw, &python).unwrap();
    assert_eq!(r.decision, "DENY");
    assert_eq!(k.entries.last().unwrap().tool_name, None);
    // Invalid requests name their tool too when it has a usable name.
    let raw = RawRequest::from_value(json!({"request_id": "v", "actor": "alice", "intent": null,
        "tool_call": {"name": "echo"}}))
    .unwrap();
    k.submit(&raw, &ctx(2_001)).unwrap();
    assert_eq!(k.entries.last().unwrap().tool_name.as_deref(), Some("echo"));
}

fn manifest(k: &MemoryKernel, from: u64, to: u64, prev: Option<&str>) -> Value {
    json!({"kernel_id": k.state.kernel_id, "from_seq": from, "to_seq": to,
           "root_hash": k.entries.get(to as usize).map_or("beyond", |e| e.entry_hash.as_str()),
           "prev_manifest_sha256": prev})
}

#[test]
fn a_rotation_must_continue_the_archive() {
    let mut k = kernel(Variant::Strict);
    for i in 0..4 {
        submit(
            &mut k,
            json!({"request_id": format!("r{i}"), "actor": "alice", "intent": "x"}),
            2_000,
        );
    }
    let discontinuous = |r: Result<crate::entry::EntryBody, EventError>| {
        matches!(r, Err(EventError::Discontinuous(_)))
    };
    // The first one starts at 0, links to nothing, ends within the ledger.
    assert!(discontinuous(k.state.rotate_event(
        3_000,
        "SYSTEM",
        manifest(&k, 1, 2, None)
    )));
    assert!(discontinuous(k.state.rotate_event(
        3_000,
        "SYSTEM",
        manifest(&k, 0, 9, None)
    )));
    assert!(discontinuous(k.state.rotate_event(
        3_000,
        "SYSTEM",
        manifest(&k, 0, 2, Some("ab"))
    )));
    let mut other = manifest(&k, 0, 2, None);
    other["kernel_id"] = json!("someone-else");
    assert!(discontinuous(k.state.rotate_event(3_000, "SYSTEM", other)));
    let first = manifest(&k, 0, 2, None);
    k.record(
        k.state
            .rotate_event(3_000, "SYSTEM", first.clone())
            .unwrap(),
    );
    let first_sha = crate::canonical::sha256_of(&first).unwrap();
    // The next one starts right after and links to the first.
    assert!(discontinuous(k.state.rotate_event(
        3_001,
        "SYSTEM",
        manifest(&k, 0, 4, Some(&first_sha))
    )));
    assert!(discontinuous(k.state.rotate_event(
        3_001,
        "SYSTEM",
        manifest(&k, 3, 4, None)
    )));
    assert!(discontinuous(k.state.rotate_event(
        3_001,
        "SYSTEM",
        manifest(&k, 3, 4, Some("x"))
    )));
    let body = k
        .state
        .rotate_event(3_001, "SYSTEM", manifest(&k, 3, 4, Some(&first_sha)))
        .unwrap();
    k.record(body);
    assert_eq!(k.state.last_rotation.as_ref().unwrap().to_seq, 4);
}

fn arb_step() -> impl Strategy<Value = Value> {
    let actors = prop::sample::select(vec!["alice", "bob", "mallory", ""]);
    let tools = prop::sample::select(vec!["echo", "add", "ghost", "rm"]);
    let intents = prop::sample::select(vec!["do it", "", "  ", "ünïcödé 🙂"]);
    (0u8..6, actors, tools, intents, any::<u16>(), any::<bool>()).prop_map(
        |(kind, actor, tool, intent, n, exact)| match kind {
            0 => json!({"halt": format!("h{n}")}),
            1 => json!({"recover": format!("r{n}")}),
            2 => json!({"policy_actor": actor}),
            _ => {
                // The tool's own parameters, or a mix no tool accepts.
                let params = match (exact, tool) {
                    (true, "add") => json!({"a": n, "b": 1}),
                    (true, _) => json!({"text": n}),
                    (false, _) => json!({"text": n, "a": n, "b": 1}),
                };
                json!({"request_id": format!("r{n}"), "actor": actor, "intent": intent,
                       "tool_call": {"name": tool, "params": params}, "params": params})
            }
        },
    )
}

/// What the kernel must do, worked out from the steps alone (not from the
/// entries, and not through `apply`): the live state and its replay are
/// both compared with it.
#[derive(Debug, Default)]
struct Model {
    halted: bool,
    session: u64,
    policy_version: u64,
    entries: u64,
    allowed_actors: std::collections::BTreeSet<String>,
    by_decision: std::collections::BTreeMap<String, u64>,
    by_event: std::collections::BTreeMap<String, u64>,
}

impl Model {
    /// A kernel just created with [`policy`].
    fn created() -> Model {
        Model {
            session: 1,
            policy_version: 1,
            entries: 1,
            allowed_actors: ["alice", "bob"].map(String::from).into(),
            by_event: [("kernel.create".to_owned(), 1)].into(),
            ..Model::default()
        }
    }

    fn event(&mut self, name: &str) {
        self.entries += 1;
        *self.by_event.entry(name.to_owned()).or_default() += 1;
    }

    /// Whether a request must be allowed (`Some(true)`), must be denied
    /// (`Some(false)`), or may go either way as far as the model knows.
    fn expect_allow(&self, request: &Value) -> Option<bool> {
        let actor = request["actor"].as_str().unwrap();
        let tool = request["tool_call"]["name"].as_str().unwrap();
        let params = request["tool_call"]["params"].as_object().unwrap();
        if actor.is_empty()
            || !self.allowed_actors.contains(actor)
            || tool == "rm"
            || params.len() == 3
        {
            return Some(false);
        }
        (request["intent"] == "do it" && matches!(tool, "echo" | "add")).then_some(true)
    }

    fn check(&self, state: &KernelState) -> Result<(), TestCaseError> {
        let expected = if self.halted {
            State::Halted
        } else {
            State::Idle
        };
        prop_assert_eq!(state.state, expected);
        prop_assert_eq!(state.session, self.session);
        prop_assert_eq!(state.policy_version, self.policy_version);
        prop_assert_eq!(state.head.len, self.entries);
        prop_assert_eq!(&state.counters.by_decision, &self.by_decision);
        prop_assert_eq!(&state.counters.by_event, &self.by_event);
        let actors = &state.policy.as_ref().unwrap().allowed_actors;
        prop_assert!(actors.iter().eq(self.allowed_actors.iter()));
        Ok(())
    }
}

proptest! {
    #[test]
    fn live_state_and_replay_follow_an_independent_model(steps in prop::collection::vec(arb_step(), 0..40)) {
        let mut k = kernel(Variant::Strict);
        let mut model = Model::created();
        model.check(&k.state)?;
        for (i, step) in steps.into_iter().enumerate() {
            let now = 2_000 + i as u64;
            if let Some(reason) = step.get("halt").and_then(Value::as_str) {
                let body = k.state.halt_event(now, "ops", reason);
                prop_assert_eq!(body.is_ok(), !model.halted);
                if let Ok(body) = body {
                    k.record(body);
                    model.halted = true;
                    model.event("kernel.halt");
                }
            } else if let Some(reason) = step.get("recover").and_then(Value::as_str) {
                let body = k.state.recover_event(now, "ops", reason);
                prop_assert_eq!(body.is_ok(), model.halted);
                if let Ok(body) = body {
                    k.record(body);
                    model.halted = false;
                    model.session += 1;
                    model.event("kernel.recover");
                }
            } else if let Some(actor) = step.get("policy_actor").and_then(Value::as_str) {
                let mut p = k.state.policy.clone().unwrap();
                p.allowed_actors.insert(actor.to_owned());
                let body = k.state.policy_update_event(now, "ops", &p, "widen", events::POLICY_FROM_API).unwrap();
                k.record(body);
                model.allowed_actors.insert(actor.to_owned());
                model.policy_version += 1;
                model.event("kernel.policy_update");
            } else {
                let raw = RawRequest::from_value(step.clone()).unwrap();
                match k.submit(&raw, &ctx(now)) {
                    Ok(receipt) => {
                        prop_assert!(!model.halted, "decided while halted: {:?}", receipt);
                        if let Some(allow) = model.expect_allow(&step) {
                            prop_assert_eq!(receipt.decision == "ALLOW", allow, "{} -> {:?}", step, receipt);
                        }
                        model.entries += 1;
                        *model.by_decision.entry(receipt.decision.clone()).or_default() += 1;
                    }
                    Err(refusal) => {
                        prop_assert!(model.halted, "refused while open: {}", refusal);
                        prop_assert!(matches!(refusal, Refusal::Halted(_)), "{}", refusal);
                    }
                }
            }
            model.check(&k.state)?;
            let replayed = KernelState::replay(&k.entries).unwrap();
            model.check(&replayed)?;
            prop_assert_eq!(&replayed, &k.state);
        }
        let mut verifier = crate::chain::ChainVerifier::new();
        for e in &k.entries { verifier.push(e.clone()); }
        prop_assert!(verifier.finish(Some(&k.state.head.hash)).valid);
    }
}
