//! What changes with time alone, looked at each second by one background service ([`Clock`]):
//! the window announced now ([`crate::windows::Announcements::refresh`], so that answers read
//! no clock), and the dead-man switch ([`DeadMan`]): a gate still closed when its `until` plus
//! `maintenance.overdue_grace` has passed is overdue (`drawbridge_gate_overdue`, `/status`);
//! with `expire` in the gate document the request path then serves the gate open
//! ([`GateState::serving`]) and `drawbridge_gate_expired` says so. Both gauges are set each
//! second, and a line is logged when the gate becomes overdue and when it opens by itself,
//! once per applied state.

use crate::gate_state::GateState;
use crate::metrics::Metrics;
use crate::windows::WindowsState;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drawbridge_core::timestamp;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;

/// How often the served state is looked at.
const TICK: Duration = Duration::from_secs(1);

/// Watches the served gate state against the clock.
pub struct DeadMan {
    pub gate: Arc<ArcSwap<GateState>>,
    pub metrics: Arc<Metrics>,
}

/// What was last said of one applied state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Said {
    applied_index: u64,
    overdue: bool,
    expired: bool,
}

impl DeadMan {
    /// Sets the gauges for the state served at `now_unix` and logs what changed since `said`.
    fn look(&self, now_unix: i64, said: Said) -> Said {
        let state = self.gate.load();
        let now = Said {
            applied_index: state.applied_index,
            overdue: state.overdue(now_unix),
            expired: state.expired(now_unix),
        };
        self.metrics.gate_overdue.set(i64::from(now.overdue));
        self.metrics.gate_expired.set(i64::from(now.expired));
        let news = now.applied_index != said.applied_index || !said.overdue;
        let until = state.doc.until.map(timestamp::full).unwrap_or_default();
        if now.overdue && news {
            tracing::warn!(
                index = state.applied_index,
                until = %until,
                "the gate is still closed past its until and the overdue grace: overdue"
            );
        }
        if now.expired && (now.applied_index != said.applied_index || !said.expired) {
            tracing::warn!(
                index = state.applied_index,
                until = %until,
                "the gate document asks to expire: the gate is open by itself (the key still says {})",
                state.doc.mode
            );
        }
        now
    }
}

/// The background service that looks at both each second.
pub struct Clock {
    pub dead_man: DeadMan,
    pub windows: Arc<ArcSwap<WindowsState>>,
}

#[async_trait]
impl BackgroundService for Clock {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut said = Said::default();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = ticks.tick() => {
                    let now = OffsetDateTime::now_utc().unix_timestamp();
                    self.windows.load().refresh(now);
                    said = self.dead_man.look(now, said);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate_state::{StateBuilder, StateSource};
    use crate::page::PageTemplate;
    use drawbridge_core::gate::GateDoc;

    fn dead_man(doc: &str) -> DeadMan {
        let builder = StateBuilder::for_test(
            vec!["api".into()],
            PageTemplate::parse("<p>{{reason}}</p>").unwrap(),
            "soon".into(),
        );
        let doc = GateDoc::parse(doc.as_bytes()).unwrap();
        let state = builder
            .build(doc, 9, StateSource::Consul, OffsetDateTime::UNIX_EPOCH)
            .unwrap();
        DeadMan {
            gate: Arc::new(ArcSwap::from_pointee(state)),
            metrics: Arc::new(Metrics::new().unwrap()),
        }
    }

    const UNTIL: i64 = 1_795_640_400; // 2026-11-25T21:00:00Z; the test builder's grace is 600 s.

    #[test]
    fn the_gauges_follow_the_clock() {
        let kept = dead_man(r#"{"mode":"maintenance","until":"2026-11-25T21:00:00Z"}"#);
        let said = kept.look(UNTIL + 599, Said::default());
        assert_eq!(kept.metrics.gate_overdue.get(), 0);
        let said = kept.look(UNTIL + 600, said);
        assert!(said.overdue && !said.expired);
        assert_eq!(kept.metrics.gate_overdue.get(), 1);
        assert_eq!(kept.metrics.gate_expired.get(), 0);

        let expiring =
            dead_man(r#"{"mode":"maintenance","until":"2026-11-25T21:00:00Z","expire":true}"#);
        let said = expiring.look(UNTIL + 600, Said::default());
        assert!(said.overdue && said.expired);
        assert_eq!(expiring.metrics.gate_expired.get(), 1);
        // A new document (the gate opened by maintctl up) clears both.
        let open = dead_man(r#"{"mode":"normal"}"#);
        expiring.gate.store(open.gate.load_full());
        expiring.look(UNTIL + 700, said);
        assert_eq!(expiring.metrics.gate_overdue.get(), 0);
        assert_eq!(expiring.metrics.gate_expired.get(), 0);
    }
}
