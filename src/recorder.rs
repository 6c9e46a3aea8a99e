//! Kubernetes Events about the objects, with a small memory.
//!
//! kube's `Recorder` keeps every event it published for six minutes, whole, to count repeats
//! into a series: with 1,000 objects just launched that cache was 14 MB of a 28 MB heap (about
//! 14 KB per event with its key and table slot), and every publish scanned all of it. A repeat
//! needs much less: the name of the event to patch, its count, and when it was last seen. Same
//! semantics otherwise: a repeat within six minutes patches `series`, anything else is created.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::Ec2Instance;
use crate::events::Reason;

/// How long a repeat still joins the earlier event (kube's Recorder uses the same).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// How often expired series are forgotten: not on every publish, which would scan them all.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_mins(1);
const REPORTER: &str = "ec2-operator";

/// One object, one reason, one note.
#[derive(Hash, PartialEq, Eq)]
struct Key {
    uid: String,
    reason: Reason,
    note: u64,
}

struct Series {
    event_name: String,
    count: i32,
    last_seen: Timestamp,
}

struct Seen {
    series: HashMap<Key, Series>,
    swept: Timestamp,
}

pub struct Recorder {
    client: Client,
    seen: Mutex<Seen>,
}

impl Recorder {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            seen: Mutex::new(Seen {
                series: HashMap::new(),
                swept: Timestamp::now(),
            }),
        }
    }

    pub async fn publish(&self, obj: &Ec2Instance, reason: Reason, note: String) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            uid: obj.uid().unwrap_or_default(),
            reason,
            note: {
                let mut hasher = DefaultHasher::new();
                note.hash(&mut hasher);
                hasher.finish()
            },
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        if let Some((event_name, count)) = self.repeat_of(&key, now) {
            let patch = json!({ "series": { "count": count, "lastObservedTime": MicroTime(now) } });
            if api
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.remember(key, event_name, count, now);
                return Ok(());
            }
            // Gone (expired, deleted): start a new one.
        }
        let event_name = format!("{}.{:x}", obj.name_any(), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: obj.namespace(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if reason.is_warning() { "Warning" } else { "Normal" }.into()),
            reason: Some(reason.as_str().into()),
            action: Some(reason.as_str().into()),
            note: Some(crate::events::truncate_note(note)),
            regarding: Some(obj.object_ref(&())),
            reporting_controller: Some(REPORTER.into()),
            reporting_instance: Some(REPORTER.into()),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.remember(key, event_name, 1, now);
        Ok(())
    }

    /// The event this one repeats and its next count, if it was seen within the window.
    fn repeat_of(&self, key: &Key, now: Timestamp) -> Option<(String, i32)> {
        let mut seen = self.seen.lock().unwrap();
        if seen.swept + SWEEP_EVERY < now {
            seen.series.retain(|_, s| s.last_seen + SERIES_WINDOW > now);
            seen.swept = now;
        }
        seen.series
            .get(key)
            .filter(|s| s.last_seen + SERIES_WINDOW > now)
            .map(|s| (s.event_name.clone(), s.count + 1))
    }

    fn remember(&self, key: Key, event_name: String, count: i32, now: Timestamp) {
        let series = Series {
            event_name,
            count,
            last_seen: now,
        };
        self.seen.lock().unwrap().series.insert(key, series);
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.seen.lock().unwrap().series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ApiServer;
    use http::Method;

    #[tokio::test]
    async fn a_first_event_is_created_and_a_repeat_patches_its_series() {
        let obj = Ec2Instance::test();
        let (client, api) = ApiServer::start(obj.clone());
        let recorder = Recorder::new(client);

        recorder
            .publish(&obj, Reason::Launched, "launched i-1".into())
            .await
            .unwrap();
        recorder
            .publish(&obj, Reason::Launched, "launched i-1".into())
            .await
            .unwrap();
        recorder
            .publish(&obj, Reason::Launched, "launched i-1".into())
            .await
            .unwrap();

        let requests = api.requests();
        let (method, path, created) = &requests[0];
        assert_eq!(method, Method::POST);
        assert!(path.ends_with("/namespaces/default/events"), "{path}");
        assert_eq!(created["reason"], "Launched");
        assert_eq!(created["type"], "Normal");
        assert_eq!(created["regarding"]["name"], "web");
        assert_eq!(created["reportingController"], "ec2-operator");
        let name = created["metadata"]["name"].as_str().unwrap();
        let counts: Vec<_> = requests[1..]
            .iter()
            .map(|(method, path, body)| {
                assert_eq!(method, Method::PATCH);
                assert!(path.ends_with(&format!("/events/{name}")), "{path}");
                body["series"]["count"].as_i64().unwrap()
            })
            .collect();
        assert_eq!(counts, vec![2, 3]);
        assert_eq!(recorder.remembered(), 1);
    }

    #[tokio::test]
    async fn another_reason_or_note_is_a_new_event() {
        let obj = Ec2Instance::test();
        let (client, api) = ApiServer::start(obj.clone());
        let recorder = Recorder::new(client);

        recorder
            .publish(&obj, Reason::Failed, "throttled".into())
            .await
            .unwrap();
        recorder
            .publish(&obj, Reason::Failed, "no capacity".into())
            .await
            .unwrap();
        recorder
            .publish(&obj, Reason::Replaced, "throttled".into())
            .await
            .unwrap();

        let requests = api.requests();
        assert!(
            requests.iter().all(|(method, _, _)| method == Method::POST),
            "{requests:?}"
        );
        assert_eq!(requests[0].2["type"], "Warning");
        assert_eq!(recorder.remembered(), 3);
    }
}
