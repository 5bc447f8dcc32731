//! `provider-ack`: consumes `provider.<provider>.ack` (stream `PROVIDER_ACKS`, consumer
//! `provider-ack`) and finishes transfers: `completed` or `failed`. Every replica also runs the
//! transfer sweeper (status queries and `stuck` events for transfers that wait too long).
//! Idempotency key: `<provider>:<transfer_id>:<status>`.

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(provider_ack::ProviderAck)
}
