//! Compiler benchmarks: a full compile of 1,000 policies over 5,000 pods, and the
//! incremental recompile after one policy changes.
//!
//! `cargo bench -p node-agent --bench compile`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use node_agent::compiler::{Compiler, EndpointScope};
use node_agent::manifest::{Object, parse_str};
use node_agent::source::SourceEvent;
use node_agent::synthetic::{POLICIES, pods, policy};

fn objects(text: &str) -> Vec<Object> {
    let parsed = parse_str("bench.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors.first());
    parsed.objects
}

fn world() -> Vec<Object> {
    let mut text = pods(4);
    for i in 0..POLICIES {
        text.push_str(&policy(i, 80));
    }
    objects(&text)
}

fn compile_all(objects: &[Object]) -> Compiler {
    let mut compiler = Compiler::new(EndpointScope::AllPods);
    for object in objects {
        compiler.apply(SourceEvent::Applied(object.clone()));
    }
    compiler.flush();
    compiler
}

fn bench(c: &mut Criterion) {
    let objects = world();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("full_1000_policies_5000_pods", |b| {
        b.iter(|| black_box(compile_all(&objects)))
    });

    let mut compiler = compile_all(&objects);
    let changed = [objects_one(&policy(1, 81)), objects_one(&policy(1, 80))];
    let mut flip = 0;
    group.bench_function("incremental_one_policy_changed", |b| {
        b.iter(|| {
            compiler.apply(SourceEvent::Applied(changed[flip].clone()));
            flip = 1 - flip;
            black_box(compiler.flush())
        })
    });
    group.finish();
}

fn objects_one(text: &str) -> Object {
    objects(text).remove(0)
}

criterion_group!(benches, bench);
criterion_main!(benches);
