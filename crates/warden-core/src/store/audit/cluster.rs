//! Reading the audit logs of hosts that share a store together: each host keeps its
//! own hash chain (verified one by one), and what crosses hosts must agree: a request
//! made on one host, decided on another and run on a third has its records on each,
//! none missing and none twice.
//!
//! It only reads; it never trusts a record's `host` over the log it came from.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// What one approval request left across the logs.
#[derive(Default)]
struct Trail<'a> {
    requested: Vec<&'a str>,
    votes: Vec<(&'a str, String)>,
    resumed: Vec<&'a str>,
    ended: Vec<&'a str>,
    /// The run the request resumes.
    run: Option<&'a str>,
}

/// The problems of `logs` (each host's name, as its log calls it, and its records)
/// read together; empty when they agree. Also how many requests were followed.
pub fn cross_check(logs: &[(String, Vec<Value>)]) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut hosts: HashMap<&str, usize> = HashMap::new();
    let mut trails: BTreeMap<&str, Trail> = BTreeMap::new();
    // Run ids that ended, by host.
    let mut ended_runs: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, (name, records)) in logs.iter().enumerate() {
        if let Some(j) = hosts.insert(name.as_str(), i) {
            problems.push(format!(
                "logs {} and {} both belong to host {name}: a host keeps one chain",
                j + 1,
                i + 1
            ));
        }
        for r in records {
            let kind = r["kind"].as_str().unwrap_or_default();
            let run = r["run"].as_str();
            if kind == "run-end"
                && let Some(run) = run
            {
                *ended_runs.entry((name.as_str(), run)).or_default() += 1;
            }
            let Some(id) = r["approval"].as_str() else {
                continue;
            };
            let t = trails.entry(id).or_default();
            match kind {
                "approval-requested" => {
                    t.requested.push(name);
                    t.run = run.or(t.run);
                }
                "approval-vote" => t.votes.push((
                    name,
                    format!(
                        "{} {}",
                        r["principal"].as_str().unwrap_or_default(),
                        r["vote"].as_str().unwrap_or_default()
                    ),
                )),
                "run-resume" => {
                    t.resumed.push(name);
                    t.run = run.or(t.run);
                }
                "approval-ended" => t.ended.push(name),
                _ => {}
            }
        }
    }
    for (id, t) in &trails {
        match t.requested.len() {
            0 => problems.push(format!(
                "request {id}: recorded on {} but its request is in no log (a log is missing, or records were removed)",
                where_(&t.votes.iter().map(|v| v.0).chain(t.resumed.iter().copied()).chain(t.ended.iter().copied()).collect::<Vec<_>>())
            )),
            1 => {}
            _ => problems.push(format!(
                "request {id}: requested {} times ({})",
                t.requested.len(),
                where_(&t.requested)
            )),
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (host, vote) in &t.votes {
            if let Some(first) = seen.insert(vote.as_str(), host) {
                problems.push(format!(
                    "request {id}: the vote \"{vote}\" is recorded twice (on {first} and {host})"
                ));
            }
        }
        if t.resumed.len() > 1 {
            problems.push(format!(
                "request {id}: ran {} times ({}): an approved call must run once",
                t.resumed.len(),
                where_(&t.resumed)
            ));
        }
        for host in &t.resumed {
            let finished = t
                .run
                .is_some_and(|run| ended_runs.get(&(*host, run)).copied().unwrap_or(0) > 0);
            if !finished && t.ended.is_empty() {
                problems.push(format!(
                    "request {id}: resumed on {host} with no end of its run on {host} and no host ending it"
                ));
            }
        }
    }
    (trails.len(), problems)
}

fn where_(hosts: &[&str]) -> String {
    let mut hosts = hosts.to_vec();
    hosts.sort();
    hosts.dedup();
    hosts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log(host: &str, records: Vec<Value>) -> (String, Vec<Value>) {
        (host.to_string(), records)
    }

    #[test]
    fn a_request_across_three_hosts_agrees_and_a_second_run_or_a_missing_log_does_not() {
        let a = log(
            "a",
            vec![
                json!({"kind": "run-start", "run": "r1"}),
                json!({"kind": "approval-requested", "run": "r1", "approval": "q1"}),
                json!({"kind": "run-end", "run": "r1"}),
            ],
        );
        let b = log(
            "b",
            vec![
                json!({"kind": "approval-vote", "run": "r1", "approval": "q1", "principal": "alice", "vote": "approve"}),
            ],
        );
        let c = log(
            "c",
            vec![
                json!({"kind": "run-resume", "run": "r1", "approval": "q1"}),
                json!({"kind": "run-end", "run": "r1"}),
            ],
        );
        assert_eq!(cross_check(&[a.clone(), b.clone(), c.clone()]), (1, vec![]));
        let (_, missing) = cross_check(&[b.clone(), c.clone()]);
        assert!(missing[0].contains("in no log"), "{missing:?}");
        let twice = log(
            "d",
            vec![
                json!({"kind": "run-resume", "run": "r1", "approval": "q1"}),
                json!({"kind": "run-end", "run": "r1"}),
            ],
        );
        let (_, problems) = cross_check(&[a.clone(), b.clone(), c.clone(), twice]);
        assert!(problems[0].contains("ran 2 times (c, d)"), "{problems:?}");
        let (_, problems) = cross_check(&[a, b.clone(), b, c]);
        assert!(
            problems.iter().any(|p| p.contains("both belong to host b")),
            "{problems:?}"
        );
    }
}
