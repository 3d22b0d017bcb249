//! The embedded log store: per stream, a bounded ring of recent records
//! (for `?since=` replay) and a bounded queue per live reader. A reader
//! that falls more than `reader_buffer` records (or [`READER_BYTES`]) behind
//! loses the oldest and is told how many, so no reader ever holds the
//! writer back, nor makes the node keep more than that for it.
//!
//! Only the pump writes, so the lock here is never taken on a request's path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{Backend, Entry, Event, LogError, LogStats, Loss, StreamId, Subscription};

/// Streams with a ring kept at most; past this a tenant stream nobody
/// follows is forgotten (its ring with it) to make room, and if every
/// stream is followed, a new one is live only (no ring, no replay). With
/// `ring_bytes` this bounds the store's memory.
const MAX_STREAMS: usize = 1024;

/// JSON bytes a reader may fall behind by, whatever `reader_buffer` says.
pub const READER_BYTES: usize = 1024 * 1024;

pub struct Memory {
    streams: Mutex<HashMap<StreamId, Ring>>,
    ring_records: usize,
    ring_bytes: usize,
    reader_buffer: usize,
    reader_bytes: usize,
    stats: Arc<LogStats>,
}

struct Ring {
    /// Whether this stream keeps recent records (false: live only).
    keep: bool,
    recent: VecDeque<Entry>,
    /// JSON bytes in `recent`.
    bytes: usize,
    readers: Vec<Arc<Live>>,
}

impl Ring {
    /// Forgets readers that went; whether any is left.
    fn followed(&mut self) -> bool {
        self.readers.retain(|r| Arc::strong_count(r) > 1);
        !self.readers.is_empty()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.queue.lock().unwrap().closed = true;
            reader.wake.notify_one();
        }
    }
}

/// One live reader's records not yet taken.
#[derive(Default)]
struct Live {
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Lost since the reader last took something.
    dropped: u64,
    closed: bool,
}

impl Memory {
    pub fn new(ring_records: usize, ring_bytes: usize, reader_buffer: usize, stats: Arc<LogStats>) -> Self {
        Memory { streams: Mutex::default(), ring_records, ring_bytes, reader_buffer: reader_buffer.max(1), reader_bytes: READER_BYTES, stats }
    }

    fn ring<'a>(&self, streams: &'a mut HashMap<StreamId, Ring>, id: StreamId) -> &'a mut Ring {
        let mut keep = true;
        if !streams.contains_key(&id) && id != StreamId::System {
            let mut kept = streams.values().filter(|r| r.keep).count();
            while kept >= MAX_STREAMS {
                let mut idle = None;
                for (k, r) in streams.iter_mut() {
                    if *k != StreamId::System && !r.followed() {
                        idle = Some(k.clone());
                        break;
                    }
                }
                // Every stream is followed: this one lives without a ring.
                let Some(idle) = idle else { break };
                if streams.remove(&idle).is_some_and(|gone| gone.keep) {
                    kept -= 1;
                }
            }
            keep = kept < MAX_STREAMS;
        }
        streams.entry(id).or_insert_with(|| Ring { keep, recent: VecDeque::new(), bytes: 0, readers: Vec::new() })
    }

    fn append(&self, ring: &mut Ring, entry: Entry) {
        if ring.keep && self.ring_records > 0 && entry.json.len() <= self.ring_bytes {
            ring.bytes += entry.json.len();
            ring.recent.push_back(entry.clone());
            while ring.recent.len() > self.ring_records || ring.bytes > self.ring_bytes {
                let old = ring.recent.pop_front().expect("over a bound, so not empty");
                ring.bytes -= old.json.len();
            }
        }
        if !ring.followed() {
            return;
        }
        for reader in &ring.readers {
            let mut queue = reader.queue.lock().unwrap();
            queue.bytes += entry.json.len();
            queue.entries.push_back(entry.clone());
            while queue.entries.len() > self.reader_buffer || queue.bytes > self.reader_bytes {
                let old = queue.entries.pop_front().expect("over a bound, so not empty");
                queue.bytes -= old.json.len();
                queue.dropped += 1;
            }
            drop(queue);
            reader.wake.notify_one();
        }
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
            let live = Arc::new(Live::default());
            ring.readers.push(live.clone());
            (replay, live)
        };
        let stats = self.stats.clone();
        let live = futures::stream::unfold((live, stats), |(live, stats)| async move {
            loop {
                let event = {
                    let mut queue = live.queue.lock().unwrap();
                    if queue.dropped > 0 {
                        let n = std::mem::take(&mut queue.dropped);
                        stats.lost(Loss::ReaderLagged, n);
                        Some(Event::Dropped(n))
                    } else if let Some(entry) = queue.entries.pop_front() {
                        queue.bytes -= entry.json.len();
                        Some(Event::Record(entry.json))
                    } else if queue.closed {
                        return None;
                    } else {
                        None
                    }
                };
                match event {
                    Some(event) => return Some((event, (live, stats))),
                    // A wake-up given before this wait is kept, so none is missed.
                    None => live.wake.notified().await,
                }
            }
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
    async fn when_every_stream_is_followed_a_new_one_is_live_only() {
        let store = Memory::new(10, 1 << 20, 4, Default::default());
        let mut readers: Vec<_> = (0..MAX_STREAMS).map(|i| store.follow(StreamId::Tenant(format!("c{i}").into()), None)).collect();
        let mut extra = store.follow(StreamId::Tenant("extra".into()), None);
        store.write(entry("extra", "live"));
        assert_eq!(msg(extra.next().await.unwrap()), "live");
        {
            let streams = store.streams.lock().unwrap();
            assert!(streams.iter().filter(|(k, r)| **k != StreamId::System && r.keep).count() <= MAX_STREAMS);
            assert!(streams[&StreamId::Tenant("extra".into())].recent.is_empty());
        }
        // Nothing to replay for it, and the others still work.
        let mut replay = store.follow(StreamId::Tenant("extra".into()), Some(SystemTime::UNIX_EPOCH));
        store.write(entry("extra", "next"));
        assert_eq!(msg(replay.next().await.unwrap()), "next");
        store.write(entry("c0", "c0"));
        assert_eq!(msg(readers[0].next().await.unwrap()), "c0");
    }

    #[tokio::test]
    async fn a_slow_reader_holds_no_more_than_its_bytes() {
        let store = Memory { reader_bytes: 1000, ..Memory::new(0, 1 << 20, 1000, Default::default()) };
        let mut a = store.follow(StreamId::Tenant("a".into()), None);
        for i in 0..100 {
            store.write(entry("a", &format!("{i:03}{}", "x".repeat(100))));
        }
        {
            let streams = store.streams.lock().unwrap();
            let queue = streams[&StreamId::Tenant("a".into())].readers[0].queue.lock().unwrap();
            assert!(queue.bytes <= 1000 && !queue.entries.is_empty(), "{}", queue.bytes);
        }
        let first = msg(a.next().await.unwrap());
        assert!(first.starts_with("dropped "), "{first}");
        assert!(msg(a.next().await.unwrap()).starts_with("09"));
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
