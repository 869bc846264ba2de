//! The tables of kubelet's nodeshutdown_manager_linux_test.go (`Test_migrateConfig`, `Test_groupByPriority`,
//! `TestManager`'s grace periods and inhibit delays, `processShutdownEvent`'s time-out), on paused time.

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::PodSpec;
use tokio::time::Instant;

use super::*;

fn p(priority: i32, seconds: i64) -> ShutdownGracePeriodByPodPriority {
    ShutdownGracePeriodByPodPriority { priority, shutdown_grace_period_seconds: seconds }
}

/// kubelet's `makePod`.
fn make_pod(name: &str, priority: i32, grace: Option<i64>) -> Arc<Pod> {
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.into());
    pod.metadata.namespace = Some("default".into());
    pod.metadata.uid = Some(name.into());
    pod.spec =
        Some(PodSpec { priority: Some(priority), termination_grace_period_seconds: grace, ..Default::default() });
    Arc::new(pod)
}

fn names(group: &PodShutdownGroup) -> Vec<&str> {
    group.pods.iter().map(|p| spec::name(p)).collect()
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn migrate_config_splits_the_period_as_kubelet() {
    assert_eq!(migrate_config(S(300), S(120)), vec![p(0, 180), p(SYSTEM_CRITICAL_PRIORITY, 120)]);
    assert_eq!(migrate_config(S(100), S(0)), vec![p(0, 100), p(SYSTEM_CRITICAL_PRIORITY, 0)]);
    assert_eq!(migrate_config(S(0), S(0)), vec![]);
    assert_eq!(migrate_config(S(1), S(100)), vec![], "wrong configuration");
    assert_eq!(period_requested(&migrate_config(S(300), S(120))), S(300));
}

#[test]
fn pods_are_grouped_by_priority_range() {
    // "migrate config"
    let pods = vec![
        make_pod("normal-pod", DEFAULT_PRIORITY_WHEN_NO_DEFAULT_CLASS_EXISTS, None),
        make_pod("highest-user-definable-pod", 1_000_000_000, None),
        make_pod("critical-pod", SYSTEM_CRITICAL_PRIORITY, None),
    ];
    let groups = group_by_priority(&migrate_config(S(300), S(120)), pods);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].period, p(0, 180));
    assert_eq!(names(&groups[0]), ["normal-pod", "highest-user-definable-pod"]);
    assert_eq!(groups[1].period, p(SYSTEM_CRITICAL_PRIORITY, 120));
    assert_eq!(names(&groups[1]), ["critical-pod"]);

    // "pod priority": below the lowest range to the lowest, above the highest to the highest.
    let periods = [p(1, 10), p(2, 20), p(3, 30), p(4, 40)];
    let pods = (0..6).map(|i| make_pod(&format!("pod-{i}"), i, None)).collect();
    let groups = group_by_priority(&periods, pods);
    let got: Vec<Vec<&str>> = groups.iter().map(names).collect();
    assert_eq!(got, vec![vec!["pod-0", "pod-1"], vec!["pod-2"], vec!["pod-3"], vec!["pod-4", "pod-5"]]);

    // Between two ranges: the lower one. No priority: 0.
    let mut no_priority = (*make_pod("none", 0, None)).clone();
    if let Some(s) = no_priority.spec.as_mut() {
        s.priority = None;
    }
    let groups = group_by_priority(&[p(0, 5), p(10, 5)], vec![make_pod("seven", 7, None), Arc::new(no_priority)]);
    assert_eq!(names(&groups[0]), ["seven", "none"]);
    assert!(groups[1].pods.is_empty());
}

/// `TestManager`'s expected grace period per pod: each range's period, or the pod's own when shorter.
#[test]
fn grace_periods_are_capped_to_the_range() {
    let normal_nil = make_pod("normal-pod-nil-grace-period", 0, None);
    let critical_nil = make_pod("critical-pod-nil-grace-period", SYSTEM_CRITICAL_PRIORITY, None);
    let normal_short = make_pod("normal-pod-grace-period", 0, Some(2));
    let critical_short = make_pod("critical-pod-grace-period", SYSTEM_CRITICAL_PRIORITY, Some(2));
    let normal_long = make_pod("normal-pod-long-grace-period", 0, Some(1000));
    let all = vec![normal_nil, critical_nil, normal_short, critical_short, normal_long];
    type Case = (u64, u64, &'static [(&'static str, i64)]);
    let cases: [Case; 3] = [
        (
            30,
            10,
            &[
                ("normal-pod-nil-grace-period", 20),
                ("critical-pod-nil-grace-period", 10),
                ("normal-pod-grace-period", 2),
                ("critical-pod-grace-period", 2),
                ("normal-pod-long-grace-period", 20),
            ],
        ),
        (30, 0, &[("normal-pod-nil-grace-period", 30), ("critical-pod-nil-grace-period", 0)]),
        (5, 5, &[("normal-pod-nil-grace-period", 0), ("critical-pod-nil-grace-period", 5)]),
    ];
    for (total, critical, want) in cases {
        let groups = group_by_priority(&migrate_config(S(total), S(critical)), all.clone());
        let got: BTreeMap<&str, i64> = groups
            .iter()
            .flat_map(|g| {
                g.pods
                    .iter()
                    .map(|pod| (spec::name(pod), grace_period_override(pod, g.period.shutdown_grace_period_seconds)))
            })
            .collect();
        for (name, grace) in want {
            assert_eq!(got.get(name), Some(grace), "{name} with total={total}s critical={critical}s");
        }
    }
}

#[test]
fn kill_waits_as_kubelets_kill_pod_now() {
    assert_eq!(kill_timeout(0), S(10));
    assert_eq!(kill_timeout(6), S(10));
    assert_eq!(kill_timeout(20), S(30));
    assert_eq!(kill_timeout(-3), S(10));
}

#[test]
fn the_terminal_status_carries_kubelets_strings() {
    let s = terminal_status();
    assert_eq!(s.reason, "Terminated");
    assert_eq!(s.message, "Pod was terminated in response to imminent node shutdown.");
    assert_eq!(
        s.disruption,
        Some(("TerminationByKubelet".into(), "Pod was terminated in response to imminent node shutdown.".into()))
    );
}

/// Every kill the fake killer saw: pod, grace period, when it started and when it ended (seconds since the start).
type Kills = Arc<Mutex<Vec<(String, i64, u64, u64)>>>;

/// A killer that takes `took[name]` seconds per pod (its grace period when not listed).
async fn run_groups(groups: Vec<PodShutdownGroup>, took: BTreeMap<&'static str, u64>) -> (Kills, u64) {
    let t0 = Instant::now();
    let kills: Kills = Arc::default();
    let seen = kills.clone();
    kill_groups(groups, move |pod, grace| {
        let seen = seen.clone();
        let secs = took.get(spec::name(&pod)).copied().unwrap_or(grace.max(0) as u64);
        async move {
            let start = t0.elapsed().as_secs();
            tokio::time::sleep(S(secs)).await;
            seen.lock().unwrap().push((spec::name(&pod).to_owned(), grace, start, t0.elapsed().as_secs()));
        }
    })
    .await;
    (kills, t0.elapsed().as_secs())
}

#[tokio::test(start_paused = true)]
async fn ordinary_pods_stop_first_then_critical_ones_each_range_within_its_period() {
    let pods = vec![
        make_pod("critical", SYSTEM_CRITICAL_PRIORITY, None),
        make_pod("quick", 0, Some(3)),
        make_pod("slow", 0, Some(600)),
    ];
    let groups = group_by_priority(&migrate_config(S(30), S(10)), pods);
    // "slow" uses its whole 20 s; "critical" starts right after it, not at 600 s.
    let (kills, total) = run_groups(groups, BTreeMap::new()).await;
    // A kill that takes its whole period may end just after the range's timer.
    tokio::time::sleep(S(1)).await;
    let kills = kills.lock().unwrap().clone();
    let by_name: BTreeMap<&str, (i64, u64, u64)> =
        kills.iter().map(|(n, g, s, e)| (n.as_str(), (*g, *s, *e))).collect();
    assert_eq!(by_name["quick"], (3, 0, 3));
    assert_eq!(by_name["slow"], (20, 0, 20));
    assert_eq!(by_name["critical"], (10, 20, 30));
    assert_eq!(total, 30);
}

#[tokio::test(start_paused = true)]
async fn a_range_that_runs_over_its_period_does_not_hold_the_next() {
    // kubelet's "kill pod func take too long": the next range starts when the period is over; the late kill
    // goes on meanwhile and still finishes.
    let groups = group_by_priority(
        &[p(1, 10), p(2, 20)],
        vec![make_pod("normal-pod", 1, None), make_pod("critical-pod", 2, None)],
    );
    let took = BTreeMap::from([("normal-pod", 60), ("critical-pod", 1)]);
    let (kills, total) = run_groups(groups, took).await;
    assert_eq!(total, 11, "range one timed out at 10 s, range two took 1 s");
    tokio::time::sleep(S(60)).await;
    let kills = kills.lock().unwrap().clone();
    assert_eq!(kills[0], ("critical-pod".to_owned(), 20, 10, 11));
    assert_eq!(kills[1], ("normal-pod".to_owned(), 10, 0, 60), "not cancelled");
}

#[tokio::test(start_paused = true)]
async fn empty_ranges_take_no_time() {
    let groups =
        group_by_priority(&migrate_config(S(30), S(10)), vec![make_pod("critical", SYSTEM_CRITICAL_PRIORITY, Some(1))]);
    let (kills, total) = run_groups(groups, BTreeMap::new()).await;
    assert_eq!(total, 1, "no 20 s wait for the empty ordinary range");
    assert_eq!(kills.lock().unwrap().len(), 1);
}

/// logind as `TestManager`'s fakeDbus sees it: the delay it reports before and after our drop-in.
#[derive(Default)]
struct FakeLogind {
    current: Duration,
    after_override: Duration,
    overridden: Mutex<Option<Duration>>,
    reloaded: Mutex<bool>,
}

impl InhibitDelay for FakeLogind {
    async fn current_inhibit_delay(&self) -> Result<Duration, LogindError> {
        let reloaded = *self.reloaded.lock().unwrap();
        Ok(if reloaded { self.after_override } else { self.current })
    }

    fn override_inhibit_delay(&self, delay: Duration) -> Result<(), LogindError> {
        *self.overridden.lock().unwrap() = Some(delay);
        Ok(())
    }

    async fn reload_logind_conf(&self) -> Result<(), LogindError> {
        *self.reloaded.lock().unwrap() = true;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_inhibit_delay_is_raised_only_when_too_short() {
    // "no override": logind allows 40 s, 30 s are asked for.
    let bus = FakeLogind { current: S(40), after_override: S(40), ..Default::default() };
    assert_eq!(ensure_inhibit_delay(&bus, S(30)).await.unwrap(), S(40));
    assert_eq!(*bus.overridden.lock().unwrap(), None);
    // "override successful": 5 s raised to 30 s.
    let bus = FakeLogind { current: S(5), after_override: S(30), ..Default::default() };
    assert_eq!(ensure_inhibit_delay(&bus, S(30)).await.unwrap(), S(30));
    assert_eq!(*bus.overridden.lock().unwrap(), Some(S(30)));
    assert!(*bus.reloaded.lock().unwrap());
    // "override unsuccessful" (another drop-in wins): kubelet's error.
    let bus = FakeLogind { current: S(5), after_override: S(5), ..Default::default() };
    let e = ensure_inhibit_delay(&bus, S(30)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "node shutdown manager was unable to update logind InhibitDelayMaxSec to 30s (ShutdownGracePeriod), current \
         value of InhibitDelayMaxSec (5s) is less than requested ShutdownGracePeriod"
    );
    // "override unsuccessful, zero time"
    let bus = FakeLogind::default();
    let e = ensure_inhibit_delay(&bus, S(5)).await.unwrap_err();
    assert!(e.to_string().contains("to 5s (ShutdownGracePeriod), current value of InhibitDelayMaxSec (0s)"), "{e}");
}

#[test]
fn the_manager_is_off_without_a_period_and_sorted_by_priority_with_one() {
    let mut config =
        crate::config::KubeletConfig::resolve(None, &crate::config::FlagOverrides::default(), "node").unwrap();
    assert!(shutdown_periods(&config).is_empty(), "kubelet's default: off");
    config.shutdown_grace_period = S(30);
    config.shutdown_grace_period_critical_pods = S(10);
    assert_eq!(shutdown_periods(&config), vec![p(0, 20), p(SYSTEM_CRITICAL_PRIORITY, 10)]);
    config.shutdown_grace_period = Duration::ZERO;
    config.shutdown_grace_period_critical_pods = Duration::ZERO;
    config.shutdown_grace_period_by_pod_priority = vec![p(100000, 5), p(0, 10), p(2_000_000_000, 3)];
    assert_eq!(shutdown_periods(&config), vec![p(0, 10), p(100000, 5), p(2_000_000_000, 3)]);
    assert_eq!(period_requested(&shutdown_periods(&config)), S(18));
}
