//! Runs a plan: for every step, each target is journalled `intent`, checked, acted on and verified
//! (`steps`), then journalled `done`, `skipped` (already so) or `failed` with what it said.
//! Targets of one step run in parallel (bounded); the run stops before the next step when any
//! target failed, when Ctrl-C was pressed, or when the lock was lost, leaving the journal true.

use crate::journal::{Journal, JournalError, RunStatus, StepStatus, TargetStatus};
use crate::lock::Lock;
use crate::output::Outcome;
use crate::plan::{Plan, Step, StepKind};
use crate::proxies::{self, Expect};
use crate::steps::{Context, TargetError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Done,
    /// A step failed; the message names the step and the targets.
    Failed(String),
    /// A verification did not succeed in time.
    VerifyTimeout(String),
    /// Stopped at a step boundary (Ctrl-C or lost lock).
    Interrupted(String),
}

/// Runs `plan`, journalling into `journal`, while `lock` is held.
///
/// # Errors
/// Only journal failures (Consul unreachable, a conflicting write): the run cannot be recorded,
/// so it stops; what it did is in the journal up to the last write.
pub async fn execute(
    ctx: Arc<Context>,
    plan: &Plan,
    journal: Journal,
    lock: &Lock,
) -> Result<RunEnd, JournalError> {
    let journal = Arc::new(Mutex::new(journal));
    // Batches of a `roll` that failed in this run, with why: the rest of each is skipped.
    let mut failed_batches: Vec<(usize, String)> = Vec::new();
    for (index, step) in plan.steps.iter().enumerate() {
        if let Some(why) = stop_reason(&ctx, lock) {
            let end = RunEnd::Interrupted(format!("{why}: next step {}", step.id));
            return end_run(&journal, end).await;
        }
        if step_status(&journal, &step.id).await == Some(StepStatus::Done) {
            continue;
        }
        if step
            .batch
            .is_some_and(|b| failed_batches.iter().any(|(failed, _)| *failed == b))
        {
            continue;
        }
        ctx.out
            .step_started(index, plan.steps.len(), &step.id, &step.title);
        let step_started = Instant::now();
        set_step(&journal, &step.id, StepStatus::Running).await?;
        if step.kind == StepKind::Smoke {
            if let Err(e) = public_still_sees_the_page(&ctx).await {
                let end = RunEnd::Failed(format!(
                    "before smoke tests: the public no longer sees the page: {e}"
                ));
                return end_run(&journal, end).await;
            }
        }
        // A batch is drained only while another box stays in the traffic.
        let guard = match step.kind {
            StepKind::Drain => ctx.keeps_one_serving(&step.targets).await.err(),
            _ => None,
        };
        let failures = match guard {
            Some(detail) => {
                for target in &step.targets {
                    let status = TargetStatus::Failed;
                    set_target(&journal, &step.id, target, status, Some(&detail)).await?;
                }
                vec![TargetFailure {
                    target: step.targets.join(", "),
                    detail,
                    verify_timeout: false,
                }]
            }
            None => run_step(&ctx, plan, step, &journal).await?,
        };
        let ok = failures.is_empty();
        ctx.out.step_ended(&step.id, ok, step_started.elapsed());
        set_step(
            &journal,
            &step.id,
            if ok {
                StepStatus::Done
            } else {
                StepStatus::Failed
            },
        )
        .await?;
        if !ok {
            let verify_timeout = failures.iter().any(|f| f.verify_timeout);
            let message = format!(
                "step {} failed: {}",
                step.id,
                failures
                    .iter()
                    .map(|f| format!("{}: {}", f.target, f.detail))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            if let Some(batch) = step.batch {
                failed_batches.push((batch, message.clone()));
                if failed_batches.len() <= plan.max_fail {
                    ctx.out.note(&format!(
                        "batch {batch} failed ({} of at most {} allowed); its boxes stay as they are, the next batch goes on",
                        failed_batches.len(),
                        plan.max_fail
                    ));
                    continue;
                }
            }
            let end = if verify_timeout {
                RunEnd::VerifyTimeout(message)
            } else {
                RunEnd::Failed(message)
            };
            return end_run(&journal, end).await;
        }
    }
    if !failed_batches.is_empty() {
        let end = RunEnd::Failed(format!(
            "{} failed within --max-fail {}: {}",
            crate::steps::count(failed_batches.len(), "batch", "batches"),
            plan.max_fail,
            failed_batches
                .iter()
                .map(|(batch, why)| format!("batch {batch}: {why}"))
                .collect::<Vec<_>>()
                .join(" || ")
        ));
        return end_run(&journal, end).await;
    }
    end_run(&journal, RunEnd::Done).await
}

/// Why the run must stop before the next step, if it must.
fn stop_reason(ctx: &Context, lock: &Lock) -> Option<&'static str> {
    if ctx.interrupted.load(Ordering::SeqCst) {
        Some("stopped by Ctrl-C before this step")
    } else if lock.is_lost() {
        Some("the lock was lost (its Consul session could not be renewed)")
    } else {
        None
    }
}

/// The public must still see the page while operators test through the gate.
async fn public_still_sees_the_page(ctx: &Context) -> Result<(), String> {
    for url in &ctx.env.public_page_urls {
        proxies::check_public(&ctx.http, url, Expect::Page).await?;
    }
    Ok(())
}

/// Ends the run in the journal as `end` says, and hands `end` back.
async fn end_run(journal: &Mutex<Journal>, end: RunEnd) -> Result<RunEnd, JournalError> {
    let status = match end {
        RunEnd::Done => RunStatus::Done,
        RunEnd::Failed(_) | RunEnd::VerifyTimeout(_) => RunStatus::Failed,
        RunEnd::Interrupted(_) => RunStatus::Interrupted,
    };
    journal.lock().await.finish(status).await?;
    Ok(end)
}

async fn step_status(journal: &Mutex<Journal>, step: &str) -> Option<StepStatus> {
    let j = journal.lock().await;
    j.run.steps.iter().find(|s| s.id == step).map(|s| s.status)
}

async fn set_step(
    journal: &Mutex<Journal>,
    step: &str,
    status: StepStatus,
) -> Result<(), JournalError> {
    let mut j = journal.lock().await;
    let record = j
        .run
        .step_mut(step)
        .expect("the journal was made from this plan");
    record.status = status;
    let now = OffsetDateTime::now_utc();
    match status {
        StepStatus::Running => {
            record.started_at.get_or_insert(now);
        }
        _ => record.ended_at = Some(now),
    }
    j.save().await
}

/// A target that failed, and whether it was a verification that ran out of time.
struct TargetFailure {
    target: String,
    detail: String,
    verify_timeout: bool,
}

/// Runs every target of `step` that is not done yet, in parallel (bounded); returns the
/// failures. A target whose task panics is a failed target, journalled as such.
async fn run_step(
    ctx: &Arc<Context>,
    plan: &Plan,
    step: &Step,
    journal: &Arc<Mutex<Journal>>,
) -> Result<Vec<TargetFailure>, JournalError> {
    let permits = Arc::new(Semaphore::new(ctx.env.parallel));
    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    for target in &step.targets {
        let previous = {
            let j = journal.lock().await;
            j.run
                .steps
                .iter()
                .find(|s| s.id == step.id)
                .and_then(|s| s.targets.iter().find(|t| &t.target == target))
                .map(|t| t.status)
        };
        if matches!(previous, Some(TargetStatus::Done | TargetStatus::Skipped)) {
            continue;
        }
        let resumed = matches!(previous, Some(TargetStatus::Intent | TargetStatus::Failed));
        let (ctx, journal, permits) = (ctx.clone(), journal.clone(), permits.clone());
        let (step, target_name) = (step.clone(), target.clone());
        let direction = plan.direction.as_str();
        let task = tasks.spawn(async move {
            let _permit = permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            set_target(&journal, &step.id, &target_name, TargetStatus::Intent, None).await?;
            let started = Instant::now();
            let deadline = ctx.target_deadline(&step.kind);
            let result = tokio::time::timeout(
                deadline,
                ctx.run_target(&step.id, &step.kind, &target_name, direction, resumed),
            )
            .await
            .unwrap_or_else(|_| {
                Err(TargetError::Failed(format!(
                    "no result within {deadline:?} (the step's timeout and verify_timeout)"
                )))
            });
            let (outcome, detail, verify_timeout) = match result {
                Ok((Outcome::Skipped, d)) => (Outcome::Skipped, format!("already so: {d}"), false),
                Ok((o, d)) => (o, d, false),
                Err(TargetError::Failed(d)) => (Outcome::Failed, d, false),
                Err(TargetError::VerifyTimeout(d)) => (Outcome::Failed, d, true),
            };
            ctx.out
                .target_ended(&step.id, &target_name, outcome, started.elapsed(), &detail);
            let status = match outcome {
                Outcome::Done => TargetStatus::Done,
                Outcome::Skipped => TargetStatus::Skipped,
                Outcome::Failed => TargetStatus::Failed,
            };
            set_target(&journal, &step.id, &target_name, status, Some(&detail)).await?;
            Ok::<_, JournalError>((status == TargetStatus::Failed).then_some(TargetFailure {
                target: target_name,
                detail,
                verify_timeout,
            }))
        });
        names.insert(task.id(), target.clone());
    }
    let mut failures = Vec::new();
    for joined in join_targets(tasks, &names).await {
        match joined {
            Ok(result) => failures.extend(result?),
            Err((target, detail)) => {
                ctx.out
                    .target_ended(&step.id, &target, Outcome::Failed, Duration::ZERO, &detail);
                set_target(
                    journal,
                    &step.id,
                    &target,
                    TargetStatus::Failed,
                    Some(&detail),
                )
                .await?;
                failures.push(TargetFailure {
                    target,
                    detail,
                    verify_timeout: false,
                });
            }
        }
    }
    Ok(failures)
}

/// Waits for every target task; a task that ended abnormally (a panic) gives its target's name
/// and what happened instead of taking `maintctl` down with it.
async fn join_targets<T: 'static>(
    mut tasks: JoinSet<T>,
    names: &HashMap<tokio::task::Id, String>,
) -> Vec<Result<T, (String, String)>> {
    let mut ended = Vec::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        ended.push(joined.map(|(_, value)| value).map_err(|e| {
            let target = names.get(&e.id()).cloned().unwrap_or_default();
            let detail = format!("its task ended abnormally ({e}); nothing after that is known");
            (target, detail)
        }));
    }
    ended
}

async fn set_target(
    journal: &Mutex<Journal>,
    step: &str,
    target: &str,
    status: TargetStatus,
    detail: Option<&str>,
) -> Result<(), JournalError> {
    let mut j = journal.lock().await;
    let t = j
        .run
        .target_mut(step, target)
        .expect("the journal was made from this plan");
    t.status = status;
    let now = OffsetDateTime::now_utc();
    match detail {
        None => t.started_at = Some(now),
        Some(detail) => {
            t.ended_at = Some(now);
            t.output = detail.to_string();
        }
    }
    j.save().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_target_task_that_panics_is_a_failed_target_not_a_panicked_run() {
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        let fine = tasks.spawn(async { 7 });
        names.insert(fine.id(), "worker1".to_string());
        let broken = tasks.spawn(async { panic!("a bug in a step") });
        names.insert(broken.id(), "worker2".to_string());
        let mut ended = join_targets(tasks, &names).await;
        ended.sort_by_key(|r| r.is_err());
        assert_eq!(ended[0], Ok(7));
        let Err((target, detail)) = &ended[1] else {
            panic!("the panicked task is an error: {ended:?}");
        };
        assert_eq!(target, "worker2");
        assert!(detail.contains("panicked"), "{detail}");
    }
}
