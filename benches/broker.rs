//! Broker micro-benchmarks, each against what a user would otherwise use
//! in the same run where there is one.
//!
//! ```text
//! cargo bench --bench broker
//! ```
//!
//! - `publish_other_topics/N`: one publish while N subscriptions watch
//!   OTHER topics. Must stay flat in N.
//! - `fanout/{tower_sse,broadcast}/N`: one event published and received
//!   by each of N subscribers (`try_next` vs `broadcast::Receiver::try_recv`).
//!   On both sides the event is data made at run time (for broadcast, a
//!   `Bytes` of a `String`, whose clones share one buffer), and each
//!   receiver gets an owned handle to it and reads its bytes: a reference
//!   taken and dropped per delivery on both sides.
//! - `replay/N`: subscribing with an id N events back and draining them.
//! - `publish_payload/{kind}`: publish cost by payload shape (frame encoding
//!   included), with nobody listening.
#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
criterion::criterion_main!(benches::all);

#[cfg(not(loom))]
mod benches {
    use std::hint::black_box;

    use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
    use tower_sse::{Broker, Event, Message, Topics};

    fn topics(name: &str) -> Topics {
        Topics::parse([name]).unwrap()
    }

    fn publish_other_topics(c: &mut Criterion) {
        let mut group = c.benchmark_group("publish_other_topics");
        for n in [0usize, 1_000, 100_000] {
            let broker = Broker::new();
            let subs: Vec<_> = (0..n)
                .map(|i| {
                    broker
                        .subscribe(&topics(&format!("other-{}", i % 100)), None)
                        .unwrap()
                })
                .collect();
            let event = Event::new("tick")
                .topic("hot")
                .data("1234567890 1234567890");
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| broker.publish(black_box(event.clone())).unwrap())
            });
            drop(subs);
        }
        group.finish();
    }

    fn fanout(c: &mut Criterion) {
        let mut group = c.benchmark_group("fanout");
        for n in [1usize, 100, 1_000] {
            group.throughput(Throughput::Elements(n as u64));
            let broker = Broker::new();
            let mut subs: Vec<_> = (0..n)
                .map(|_| broker.subscribe(&topics("hot"), None).unwrap())
                .collect();
            let event = Event::new("tick")
                .topic("hot")
                .data("1234567890 1234567890");
            group.bench_with_input(BenchmarkId::new("tower_sse", n), &n, |b, _| {
                b.iter(|| {
                    broker.publish(event.clone()).unwrap();
                    for sub in &mut subs {
                        match sub.try_next() {
                            Some(Message::Event(e)) => {
                                black_box(e.frame());
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                })
            });

            let (tx, _) = tokio::sync::broadcast::channel::<bytes::Bytes>(2_000);
            let mut receivers: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
            group.bench_with_input(BenchmarkId::new("broadcast", n), &n, |b, _| {
                b.iter(|| {
                    // What a user publishes: data made at run time, framed
                    // per connection later.
                    tx.send(bytes::Bytes::from(String::from("1234567890 1234567890")))
                        .unwrap();
                    for rx in &mut receivers {
                        let data = rx.try_recv().unwrap();
                        black_box(&data[..]);
                    }
                })
            });
        }
        group.finish();
    }

    fn replay(c: &mut Criterion) {
        let mut group = c.benchmark_group("replay");
        let broker = Broker::builder().retain_events(2_000).build();
        let ids: Vec<_> = (0..2_000)
            .map(|i| {
                broker
                    .publish(
                        Event::new("tick")
                            .topic("hot")
                            .data(format!("{i} 1234567890")),
                    )
                    .unwrap()
            })
            .collect();
        for n in [10usize, 100, 1_000, 1_999] {
            group.throughput(Throughput::Elements(n as u64));
            let from = ids[ids.len() - 1 - n].to_string();
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.iter(|| {
                    let mut sub = broker.subscribe(&topics("hot"), Some(&from)).unwrap();
                    let mut got = 0;
                    while let Some(message) = sub.try_next() {
                        black_box(message);
                        got += 1;
                    }
                    assert_eq!(got, n);
                })
            });
        }
        group.finish();
    }

    fn publish_payload(c: &mut Criterion) {
        let mut group = c.benchmark_group("publish_payload");
        let cases = [
            ("small", "1234567890 1234567890".to_owned()),
            ("json_1k", format!("{{\"text\":\"{}\"}}", "x".repeat(1_000))),
            ("multiline_1k", "line of text\n".repeat(80)),
            (
                "json_64k",
                format!("{{\"text\":\"{}\"}}", "x".repeat(64_000)),
            ),
        ];
        for (name, data) in cases {
            let broker = Broker::builder().retain_events(16).build();
            group.throughput(Throughput::Bytes(data.len() as u64));
            group.bench_function(name, |b| {
                b.iter_batched(
                    || Event::new("tick").data(data.clone()),
                    |event| broker.publish(event).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }

    criterion_group!(all, publish_other_topics, fanout, replay, publish_payload);
}
