//! The access policy: who may publish what on the bus, built from the members file.
//!
//! zenoh's access control matches a peer by the exact common name of its certificate, so the
//! policy names every member: [`policy`] turns the members into zenoh's `access_control`
//! document, applied by every process to what it receives (ingress), default deny. Keys that
//! carry a name (`stream/<name>/**`, a liveliness token, watermarks) are allowed from that
//! identity alone; the role-wide rows from every member of the role. The table in
//! `docs/security.md` is this module in prose; `tests/security.rs` tries every row.

use serde_json::{json, Value};

use crate::keys::KeySpace;
use crate::tls::{IdRole, Identity};

/// What a member may send, as `(zenoh messages, key patterns under the prefix)` pairs.
fn grants(id: &Identity) -> Vec<(&'static [&'static str], Vec<String>)> {
    let n = &id.name;
    let every_member: (&[&str], Vec<String>) = (
        &["declare_subscriber", "declare_queryable", "declare_liveliness_subscriber", "liveliness_query"],
        vec!["**".to_owned()],
    );
    let mut g = vec![
        every_member,
        (
            &["query"],
            vec![
                "view/**".to_owned(),
                "status/**".to_owned(),
                "limits/config/*".to_owned(),
                "config/state/*".to_owned(),
            ],
        ),
    ];
    match id.role {
        IdRole::Agent => {
            g.push((
                &["put"],
                vec![
                    format!("stream/{n}/**"),
                    format!("head/{n}"),
                    format!("counter/{n}"),
                    "dlr/ask/*".to_owned(),
                    format!("dlr/answer/*/{n}"),
                ],
            ));
            g.push((&["liveliness_token"], vec![format!("node/{n}"), format!("serves/*/{n}")]));
            g.push((
                &["query"],
                vec![
                    "dlr/id/**".to_owned(),
                    "dlr/at/**".to_owned(),
                    "dlr/replica/*".to_owned(),
                    format!("dlr/restore/*/{n}"),
                    "config/object/**".to_owned(),
                ],
            ));
            g.push((
                &["reply"],
                vec![
                    format!("replay/{n}/**"),
                    format!("limits/config/{n}"),
                    format!("view/node/{n}"),
                    format!("status/node/{n}"),
                    "dlr/id/**".to_owned(),
                    format!("dlr/at/{n}/**"),
                    format!("dlr/replica/{n}"),
                    format!("dlr/restore/{n}/*"),
                    format!("config/state/{n}"),
                    format!("config/object/{n}/*"),
                ],
            ));
        }
        IdRole::Collector => {
            g.push((&["put"], vec![format!("watermark/{n}/**")]));
            g.push((&["liveliness_token"], vec![format!("collector/{n}")]));
            g.push((&["query"], vec!["replay/**".to_owned()]));
            g.push((&["reply"], vec![format!("view/collector/{n}"), format!("status/collector/{n}")]));
        }
        IdRole::Admin => {
            // An admin looks DLRs up on the ask stream only: a query on `dlr/id` or `dlr/at` may
            // carry a report (which closes the record and reaches the owner's gateway), and the
            // policy cannot tell a lookup from a report on one key.
            g.push((&["put"], vec!["config/push".to_owned(), "dlr/ask/*".to_owned()]));
            g.push((&["query"], vec!["config/object/**".to_owned()]));
        }
    }
    g
}

/// zenoh's `access_control` document for `members` under `keys`.
///
/// Each member's link matches exactly one subject (its certificate's common name), whose policy
/// holds every rule for that link: a process's own messages out (never filtered) and what the
/// member may send in. zenoh logs a decision per matching subject, and a subject that allows
/// nothing logs a denial even when another allows the message; with one subject per link each
/// logged denial is a message dropped, which is what [`crate::refusals::AccessDeniedLayer`]
/// counts. A certificate of the CA that is not a member matches no subject: the default
/// (deny) drops what it sends without a log line, and nothing is sent to it.
pub fn policy(keys: &KeySpace, members: &[Identity]) -> Value {
    // A process's own messages are never filtered: every member's link may carry them.
    let mut rules = vec![json!({
        "id": "own-messages",
        "messages": ["put", "delete", "declare_subscriber", "query", "declare_queryable", "reply",
                     "liveliness_token", "declare_liveliness_subscriber", "liveliness_query"],
        "flows": ["egress"],
        "permission": "allow",
        "key_exprs": ["**"],
    })];
    let mut subjects = Vec::new();
    let mut policies = Vec::new();
    for (m, id) in members.iter().enumerate() {
        let subject = format!("m{m}");
        subjects.push(json!({ "id": subject, "cert_common_names": [id.to_string()] }));
        let mut ids = vec!["own-messages".to_owned()];
        for (r, (messages, patterns)) in grants(id).into_iter().enumerate() {
            let rule = format!("m{m}r{r}");
            rules.push(json!({
                "id": rule,
                "messages": messages,
                "flows": ["ingress"],
                "permission": "allow",
                "key_exprs": patterns.iter().map(|p| keys.pattern(p)).collect::<Vec<_>>(),
            }));
            ids.push(rule);
        }
        policies.push(json!({ "id": format!("member-{m}"), "rules": ids, "subjects": [subject] }));
    }
    json!({
        "enabled": true,
        "default_permission": "deny",
        "rules": rules,
        "subjects": subjects,
        "policies": policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_gets_its_own_keys_and_its_roles() {
        let keys = KeySpace::new("sb/t").unwrap();
        let members: Vec<Identity> =
            ["agent:gw1", "collector:c1", "admin:ops"].iter().map(|s| s.parse().unwrap()).collect();
        let p = policy(&keys, &members);
        let text = p.to_string();
        for want in [
            "sb/t/stream/gw1/**",
            "sb/t/node/gw1",
            "sb/t/watermark/c1/**",
            "sb/t/collector/c1",
            "sb/t/config/push",
            "sb/t/dlr/answer/*/gw1",
            "sb/t/dlr/at/gw1/**",
            "\"agent:gw1\"",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        // Nobody but an agent may send log batches; nobody but the collector watermarks.
        let rules = p["rules"].as_array().unwrap();
        let granted = |key: &str| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r["key_exprs"].as_array().unwrap().iter().any(|k| k == key))
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(granted("sb/t/stream/gw1/**"), ["m0r2"]);
        assert_eq!(granted("sb/t/watermark/c1/**"), ["m1r2"]);
        // Only gw1 answers DLR lookups in its own name.
        assert_eq!(granted("sb/t/dlr/answer/*/gw1"), ["m0r2"]);
        assert_eq!(granted("sb/t/dlr/at/gw1/**"), ["m0r5"]);
        assert_eq!(p["default_permission"], "deny");
        // One subject per member and no catch-all, each policy with the rule for its own messages
        // out: a logged denial is then a message dropped.
        let subjects = p["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), members.len());
        assert!(subjects.iter().all(|s| s["cert_common_names"].as_array().is_some_and(|n| n.len() == 1)));
        for policy in p["policies"].as_array().unwrap() {
            assert_eq!(policy["rules"][0], "own-messages", "{policy}");
            assert_eq!(policy["subjects"].as_array().unwrap().len(), 1, "{policy}");
        }
    }
}
