//! NULL-call round trips on loopback: the fixed cost the RPC layer adds to every NLM call.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockd_user::server::{CallContext, ProcError, Reply, RpcProgram};
use lockd_user::xdr::Decoder;
use lockd_user::{ClientConfig, RpcClient, RpcServer, ServerConfig, Transport};
use std::net::SocketAddr;
use std::sync::Arc;

struct Null;

impl RpcProgram for Null {
    fn program(&self) -> u32 {
        0x2000_0103
    }
    fn versions(&self) -> (u32, u32) {
        (1, 1)
    }
    fn call(&self, _: &CallContext, _: &mut Decoder<'_>) -> Result<Reply, ProcError> {
        Ok(Reply::Now(Vec::new()))
    }
}

fn null_round_trips(c: &mut Criterion) {
    // One worker, as `lockfs serve` runs it; the client shares it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut g = c.benchmark_group("null_call");
    g.throughput(Throughput::Elements(1));
    // With the default busy polling after each reply, and without it.
    let configs = [
        ("", ServerConfig::default()),
        (
            "/no_busy_poll",
            ServerConfig {
                busy_poll: None,
                ..ServerConfig::default()
            },
        ),
    ];
    for (suffix, config) in configs {
        let server = rt.block_on(async {
            RpcServer::builder(config)
                .program(Arc::new(Null))
                .udp(lo)
                .tcp(lo)
                .start()
                .await
                .unwrap()
        });
        for t in [Transport::Tcp, Transport::Udp] {
            if t == Transport::Udp && !suffix.is_empty() {
                continue; // busy polling is a TCP setting
            }
            let peer = match t {
                Transport::Udp => server.udp_addrs()[0],
                Transport::Tcp => server.tcp_addrs()[0],
            };
            let client = rt.block_on(async {
                RpcClient::new(t, peer, ClientConfig::default())
                    .await
                    .unwrap()
            });
            g.bench_function(format!("{t:?}{suffix}"), |b| {
                b.iter(|| {
                    rt.block_on(client.call_raw(0x2000_0103, 1, 0, &[]))
                        .unwrap()
                })
            });
        }
        rt.block_on(server.shutdown());
    }
    g.finish();
}

criterion_group!(benches, null_round_trips);
criterion_main!(benches);
