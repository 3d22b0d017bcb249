//! The embedded log store: per stream, a bounded ring of recent records
//! (for `?since=` replay) and a broadcast channel for live readers. A reader
//! that falls more than `reader_buffer` records behind loses the oldest and
//! is told how many, so no reader ever holds the writer back.
//!
//! Only the pump writes, so the lock here is never taken on a request's path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Backend, Entry, Event, LogError, LogStats, Loss, StreamId, Subscription};

/// Streams kept at most; past this a tenant stream nobody follows is
/// forgotten (its ring with it) to make room. With `ring_bytes` this bounds
/// the store's memory.
const MAX_STREAMS: usize = 1024;

pub struct Memory {
    streams: Mutex<HashMap<StreamId, Ring>>,
    ring_records: usize,
    ring_bytes: usize,
    reader_buffer: usize,
    stats: Arc<LogStats>,
}

struct Ring {
    recent: VecDeque<Entry>,
    /// JSON bytes in `recent`.
    bytes: usize,
    live: broadcast::Sender<Entry>,
}

impl Memory {
    pub fn new(ring_records: usize, ring_bytes: usize, reader_buffer: usize, stats: Arc<LogStats>) -> Self {
        Memory { streams: Mutex::default(), ring_records, ring_bytes, reader_buffer: reader_buffer.max(1), stats }
    }

    fn ring<'a>(&self, streams: &'a mut HashMap<StreamId, Ring>, id: StreamId) -> &'a mut Ring {
        if streams.len() >= MAX_STREAMS && !streams.contains_key(&id) {
            let idle = streams.iter().find(|(k, r)| **k != StreamId::System && r.live.receiver_count() == 0).map(|(k, _)| k.clone());
            if let Some(idle) = idle {
                streams.remove(&idle);
            }
        }
        streams.entry(id).or_insert_with(|| Ring {
            recent: VecDeque::with_capacity(self.ring_records.min(64)),
            bytes: 0,
            live: broadcast::channel(self.reader_buffer).0,
        })
    }

    fn append(&self, ring: &mut Ring, entry: Entry) {
        if self.ring_records > 0 && entry.json.len() <= self.ring_bytes {
            ring.bytes += entry.json.len();
            ring.recent.push_back(entry.clone());
            while ring.recent.len() > self.ring_records || ring.bytes > self.ring_bytes {
                let old = ring.recent.pop_front().expect("over a bound, so not empty");
                ring.bytes -= old.json.len();
            }
        }
        // No receiver is not an error: nobody is reading this stream now.
        let _ = ring.live.send(entry);
    }
}

impl Backend for Memory {
    fn write(&self, entry: Entry) {
        let mut streams = self.streams.lock().unwrap();
        if let Some(container) = &entry.tenant {
            let ring = self.ring(&mut streams, StreamId::Tenant(container.clone()));
            self.append(ring, entry.clone());
        }
        let ring = self.ring(&mut streams, StreamId::System);
        self.append(ring, entry);
    }

    fn subscribe(&self, stream: StreamId, since: Option<SystemTime>) -> BoxFuture<'static, Result<Subscription, LogError>> {
        Box::pin(futures::future::ready(Ok(self.follow(stream, since))))
    }
}

impl Memory {
    fn follow(&self, stream: StreamId, since: Option<SystemTime>) -> Subscription {
        // Replay and live subscription under one lock: nothing written in
        // between is missed or seen twice.
        let (replay, live) = {
            let mut streams = self.streams.lock().unwrap();
            let ring = self.ring(&mut streams, stream);
            let replay: Vec<Event> = match since {
                Some(since) => ring.recent.iter().filter(|e| e.time >= since).map(|e| Event::Record(e.json.clone())).collect(),
                None => Vec::new(),
            };
            (replay, ring.live.subscribe())
        };
        let stats = self.stats.clone();
        let live = futures::stream::unfold((live, stats), |(mut rx, stats)| async move {
            let event = match rx.recv().await {
                Ok(entry) => Event::Record(entry.json),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    stats.lost(Loss::ReaderLagged, n);
                    Event::Dropped(n)
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((event, (rx, stats)))
        });
        Box::pin(futures::StreamExt::chain(futures::stream::iter(replay), live))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::logs::Record;

    fn entry(container: &str, msg: &str) -> Entry {
        Entry::from(&Record::tenant(container.into(), None, 30, msg.into()))
    }

    fn msg(event: Event) -> String {
        match event {
            Event::Record(json) => serde_json::from_slice::<serde_json::Value>(&json).unwrap()["msg"].as_str().unwrap().to_owned(),
            Event::Dropped(n) => format!("dropped {n}"),
        }
    }

    #[tokio::test]
    async fn streams_are_per_container_and_system_sees_all() {
        let store = Memory::new(10, 1 << 20, 10, Default::default());
        let mut a = store.follow(StreamId::Tenant("a".into()), None);
        let mut system = store.follow(StreamId::System, None);
        store.write(entry("b", "from b"));
        store.write(entry("a", "from a"));
        assert_eq!(msg(a.next().await.unwrap()), "from a");
        assert_eq!(msg(system.next().await.unwrap()), "from b");
        assert_eq!(msg(system.next().await.unwrap()), "from a");
    }

    #[tokio::test]
    async fn since_replays_the_ring_then_follows() {
        let store = Memory::new(2, 1 << 20, 10, Default::default());
        for m in ["one", "two", "three"] {
            store.write(entry("a", m));
        }
        let mut a = store.follow(StreamId::Tenant("a".into()), Some(SystemTime::UNIX_EPOCH));
        store.write(entry("a", "four"));
        let got: Vec<_> = a.by_ref().take(3).map(msg).collect().await;
        assert_eq!(got, ["two", "three", "four"]);
    }

    #[tokio::test]
    async fn a_slow_reader_loses_the_oldest_and_is_told() {
        let stats = Arc::new(LogStats::default());
        let store = Memory::new(0, 1 << 20, 4, stats.clone());
        let mut a = store.follow(StreamId::Tenant("a".into()), None);
        for i in 0..10 {
            store.write(entry("a", &i.to_string()));
        }
        let got: Vec<_> = a.by_ref().take(5).map(msg).collect().await;
        assert_eq!(got, ["dropped 6", "6", "7", "8", "9"]);
        assert_eq!(stats.dropped[Loss::ReaderLagged as usize].load(std::sync::atomic::Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn streams_nobody_follows_make_room_for_new_ones() {
        let store = Memory::new(1, 1 << 20, 4, Default::default());
        let mut followed = store.follow(StreamId::Tenant("kept".into()), None);
        for i in 0..MAX_STREAMS + 10 {
            store.write(entry(&format!("c{i}"), "x"));
        }
        assert!(store.streams.lock().unwrap().len() <= MAX_STREAMS);
        store.write(entry("kept", "still here"));
        assert_eq!(msg(followed.next().await.unwrap()), "still here");
    }

    #[tokio::test]
    async fn rings_keep_to_their_byte_bound() {
        let store = Memory::new(100, 600, 4, Default::default());
        for i in 0..10 {
            store.write(entry("a", &format!("{i}{}", "x".repeat(100))));
        }
        let streams = store.streams.lock().unwrap();
        let ring = &streams[&StreamId::Tenant("a".into())];
        assert!(ring.bytes <= 600 && !ring.recent.is_empty());
        assert_eq!(ring.bytes, ring.recent.iter().map(|e| e.json.len()).sum::<usize>());
    }
}
