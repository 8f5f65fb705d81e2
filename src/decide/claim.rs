//! Claiming the zone's persistent ENI at boot.

use std::fmt;

/// What EC2 says about the ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniFacts {
    pub az: String,
    /// The instance it is attached to (or attaching/detaching from), with that attachment's id.
    pub holder: Option<Holder>,
    /// The ENI's own status: `available`, `in-use`, `attaching`, `detaching`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub instance_id: String,
    pub attachment_id: String,
    /// The holder's instance state as EC2 reports it (`running`, `stopped`, `terminated`...),
    /// `None` when EC2 no longer knows the instance.
    pub instance_state: Option<String>,
    pub device_index: i32,
}

/// What this gateway knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfFacts {
    pub instance_id: String,
    pub az: String,
    pub device_index: i32,
}

/// The next step towards owning the ENI. The agent executes one step, observes again, and asks
/// again, until `Owned` (or a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimStep {
    /// Already attached to us: nothing to do on the API side.
    Owned,
    /// Free: attach it to us.
    Attach,
    /// A dead holder still has it: detach it, forcibly when the holder is gone for good.
    Detach { attachment_id: String, force: bool },
    /// Something is in flight (attaching/detaching): look again shortly.
    Wait { reason: String },
    /// A live instance of this zone holds it (the gateway being replaced, during an instance
    /// refresh that launches before it terminates): this gateway becomes the zone's standby
    /// and claims the ENI once its holder lets go of it or dies.
    Standby { holder: String, state: String },
    /// Never to be done: the agent reports this and gives up (ABANDON at boot).
    Refuse { reason: String },
}

impl fmt::Display for ClaimStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owned => write!(f, "owned"),
            Self::Attach => write!(f, "attach"),
            Self::Detach {
                attachment_id,
                force,
            } => {
                write!(
                    f,
                    "detach {attachment_id}{}",
                    if *force { " (force)" } else { "" }
                )
            }
            Self::Wait { reason } => write!(f, "wait: {reason}"),
            Self::Standby { holder, state } => {
                write!(f, "standby: held by {holder}, which is {state}")
            }
            Self::Refuse { reason } => write!(f, "refuse: {reason}"),
        }
    }
}

/// Instance states in which a holder can no longer forward anything.
fn holder_is_dead(state: Option<&str>) -> bool {
    matches!(
        state,
        None | Some("terminated" | "shutting-down" | "stopped" | "stopping")
    )
}

/// Decide the next step to own `eni`.
pub fn next_step(me: &SelfFacts, eni: &EniFacts) -> ClaimStep {
    if eni.az != me.az {
        return ClaimStep::Refuse {
            reason: format!(
                "the ENI is in {} but this instance is in {}: fix the zone tag or the ENI id",
                eni.az, me.az
            ),
        };
    }
    let Some(holder) = &eni.holder else {
        return match eni.status.as_str() {
            "available" => ClaimStep::Attach,
            other => ClaimStep::Wait {
                reason: format!("ENI status is {other} with no attachment"),
            },
        };
    };
    if holder.instance_id == me.instance_id {
        return match eni.status.as_str() {
            "in-use" => ClaimStep::Owned,
            "detaching" => ClaimStep::Wait {
                reason: "our own earlier attachment is detaching".into(),
            },
            other => ClaimStep::Wait {
                reason: format!("attachment to us is {other}"),
            },
        };
    }
    let state = holder.instance_state.as_deref();
    if !holder_is_dead(state) {
        // Never taken from a live holder: wait as the zone's standby until it lets go.
        return ClaimStep::Standby {
            holder: holder.instance_id.clone(),
            state: state.unwrap_or("unknown").to_owned(),
        };
    }
    if eni.status == "detaching" {
        return ClaimStep::Wait {
            reason: format!("detaching from {}", holder.instance_id),
        };
    }
    // A terminated or vanished holder will never release the ENI gracefully; a stopped one has no
    // OS to cooperate either, but a graceful detach is tried first there.
    let force = matches!(state, None | Some("terminated" | "shutting-down"));
    ClaimStep::Detach {
        attachment_id: holder.attachment_id.clone(),
        force,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> SelfFacts {
        SelfFacts {
            instance_id: "i-me".into(),
            az: "us-east-1a".into(),
            device_index: 1,
        }
    }

    fn eni(status: &str, holder: Option<(&str, Option<&str>)>) -> EniFacts {
        EniFacts {
            az: "us-east-1a".into(),
            status: status.into(),
            holder: holder.map(|(id, state)| Holder {
                instance_id: id.into(),
                attachment_id: format!("eni-attach-{id}"),
                instance_state: state.map(str::to_string),
                device_index: 1,
            }),
        }
    }

    #[test]
    fn table() {
        use ClaimStep::*;
        let cases: Vec<(&str, EniFacts, ClaimStep)> = vec![
            ("free", eni("available", None), Attach),
            (
                "ours",
                eni("in-use", Some(("i-me", Some("running")))),
                Owned,
            ),
            (
                "ours, still attaching",
                eni("attaching", Some(("i-me", Some("running")))),
                Wait {
                    reason: "attachment to us is attaching".into(),
                },
            ),
            (
                "terminated holder",
                eni("in-use", Some(("i-old", Some("terminated")))),
                Detach {
                    attachment_id: "eni-attach-i-old".into(),
                    force: true,
                },
            ),
            (
                "vanished holder",
                eni("in-use", Some(("i-old", None))),
                Detach {
                    attachment_id: "eni-attach-i-old".into(),
                    force: true,
                },
            ),
            (
                "stopped holder",
                eni("in-use", Some(("i-old", Some("stopped")))),
                Detach {
                    attachment_id: "eni-attach-i-old".into(),
                    force: false,
                },
            ),
            (
                "dead holder, detach in flight",
                eni("detaching", Some(("i-old", Some("terminated")))),
                Wait {
                    reason: "detaching from i-old".into(),
                },
            ),
            (
                "in flight, no holder",
                eni("detaching", None),
                Wait {
                    reason: "ENI status is detaching with no attachment".into(),
                },
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(next_step(&me(), &facts), want, "{name}");
        }
    }

    #[test]
    fn never_steals_from_a_live_gateway_but_stands_by() {
        for state in ["running", "pending"] {
            let step = next_step(&me(), &eni("in-use", Some(("i-other", Some(state)))));
            assert_eq!(
                step,
                ClaimStep::Standby {
                    holder: "i-other".into(),
                    state: state.into()
                },
                "{state}"
            );
        }
    }

    #[test]
    fn refuses_an_eni_in_another_zone() {
        let mut facts = eni("available", None);
        facts.az = "us-east-1b".into();
        let step = next_step(&me(), &facts);
        assert!(
            matches!(&step, ClaimStep::Refuse { reason } if reason.contains("us-east-1b") && reason.contains("us-east-1a")),
            "{step}"
        );
    }
}
